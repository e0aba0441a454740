"""``lianxin simulate``: a day of the national federation (or Sichuan alone) through the real exchange rules."""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

# `lianxin --help` registers this command: the simulator itself (numpy, the exchange store) is
# imported only when it runs (tests/unit/test_cli.py keeps --help light).
if TYPE_CHECKING:
    from .engine import ProvinceResult, SimConfig
    from .run import Report

# The volume model's defaults (bench/simulate/volume.py), resolved when the command runs.
_VOLUME_OPTIONS = ("petitions_per_million", "hotline_per_million", "dispatched_share")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a day of the national federation through the real exchange rules (docs/scale.md)",
        description="A discrete-event simulation of 31 provinces (or --scope sichuan) over simulated links "
        "with latency, loss and cuts, running exchange's own rules (batching, cursors, acknowledgements, "
        "judging, quarantine). Prints the lag per tier, the national link's load and the storage growth per tier.",
    )
    p.add_argument("--scope", choices=("national", "sichuan"), default="national")
    p.add_argument("--hours", type=float, default=24.0, help="simulate HOURS of the day (default 24)")
    p.add_argument(
        "--from-hour", type=float, default=0.0, help="start at this hour, the nodes warm with what came before"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one province at a time each")
    p.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres", help="receiver store costs")
    p.add_argument("--event-driven", action="store_true", help="links and relays wake at once (no 0.2 s polling)")
    p.add_argument("--poll-ms", type=float, default=200.0, help="link timer and outbox relay period (default 200)")
    p.add_argument("--petitions-per-million", type=float, help="online petitions per million residents per day")
    p.add_argument(
        "--hotline-per-million",
        type=float,
        help="12345 contacts per million residents per day outside Beijing (default: a third of Beijing's 3,106)",
    )
    p.add_argument("--dispatched-share", type=float, help="share of 12345 contacts dispatched as work orders")
    p.add_argument("--loss", type=float, default=0.001, help="share of requests and replies lost on every link")
    p.add_argument(
        "--latency-ms", default="5,8,20", help="one-way latency county→city, city→province, province→national"
    )
    p.add_argument(
        "--cut",
        action="append",
        default=[],
        metavar="NODE:START:DURATION",
        help="cut NODE's link up, e.g. 511102:10h:2h (repeatable; s, m or h)",
    )
    p.add_argument("--cuts", type=int, default=0, help="also cut this many random counties' links")
    p.add_argument("--cut-minutes", type=float, default=60.0, help="length of each random cut")
    p.add_argument("--poison-rate", type=float, default=0.0, help="share of county events with a forged owner")
    p.add_argument("--no-storage", action="store_true", help="skip measuring the store's bytes per event")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.set_defaults(func=cmd_simulate)


class UsageError(ValueError):
    """A bad option: printed as one line, exit status 2."""


def _seconds(text: str) -> float:
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:])
    return float(text[:-1]) * unit if unit else float(text)


def config_from(args: argparse.Namespace) -> SimConfig:
    """The run's configuration; a bad option is one line naming it (exit 2)."""
    from services.common.regions import Tier

    from .engine import Cut, SimConfig
    from .topology import federation
    from .volume import VolumeModel

    model = VolumeModel()
    defaults = (model.petitions_per_million, model.hotline_per_million, model.hotline_dispatched_share)
    for name, default in zip(_VOLUME_OPTIONS, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    try:
        latencies = [float(x) for x in args.latency_ms.split(",")]
        if len(latencies) != 3:
            raise ValueError
    except ValueError:
        raise UsageError("--latency-ms: three numbers, e.g. 5,8,20") from None
    if args.hours <= 0 or args.from_hour < 0 or args.from_hour + args.hours > 24:
        raise UsageError("--hours, --from-hour: a window within the day's 24 hours")
    for name in ("loss", "poison_rate", "dispatched_share"):
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"--{name.replace('_', '-')}: a share between 0 and 1")
    fed = federation(args.scope, seed=args.seed)
    cuts: list[Cut] = []
    for spec in args.cut:
        try:
            node, start, duration = spec.split(":")
            begin = _seconds(start)
            cuts.append(Cut(node, begin, begin + _seconds(duration)))
        except ValueError:
            raise UsageError(f"--cut {spec}: NODE:START:DURATION, e.g. 511102:10h:2h") from None
        if node not in fed.regions:
            raise UsageError(f"--cut {spec}: {node} is not a node of the {args.scope} scope")
    rng = random.Random(args.seed)
    counties = [c for c, r in fed.regions.regions.items() if r.tier is Tier.COUNTY]
    for node in rng.sample(sorted(counties), min(args.cuts, len(counties))):
        begin = rng.uniform(args.from_hour * 3600, (args.from_hour + args.hours) * 3600)
        cuts.append(Cut(node, begin, begin + args.cut_minutes * 60))
    poll = 0.0 if args.event_driven else args.poll_ms / 1000
    base = SimConfig()
    return SimConfig(
        scope=args.scope,
        seed=args.seed,
        volume=VolumeModel(
            petitions_per_million=args.petitions_per_million,
            hotline_per_million=args.hotline_per_million,
            hotline_dispatched_share=args.dispatched_share,
        ),
        backend=args.backend,
        poll_s=poll,
        relay_s=poll,
        links={
            tier: replace(profile, latency_ms=latency, loss=args.loss)
            for (tier, profile), latency in zip(base.links.items(), latencies, strict=True)
        },
        cuts=cuts,
        poison_rate=args.poison_rate,
        day_s=(args.from_hour + args.hours) * 3600,
        start_s=args.from_hour * 3600,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from .run import simulate
    from .storage import measure
    from .topology import federation
    from .volume import size_mix

    try:
        config = config_from(args)
    except UsageError as error:
        print(f"lianxin simulate: {error}", file=sys.stderr)
        return 2
    storage = None
    if not args.no_storage:
        sichuan = next(p for p in federation("sichuan").provinces)
        mix = size_mix(config.volume.daily_cases(sichuan.code, sichuan.population_m))
        storage = measure(sorted(mix.items()))
    provinces = len(federation(args.scope, seed=args.seed).provinces)
    done = [0]

    def progress(result: ProvinceResult) -> None:
        done[0] += 1
        print(f"\r{done[0]}/{provinces} provinces ({result.province}: {result.events:,} events)", end="",
              file=sys.stderr, flush=True)  # fmt: skip

    report = simulate(config, jobs=args.jobs, storage=storage, progress=progress)
    print(file=sys.stderr)
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json(report, sys.argv), ensure_ascii=False, indent=2), encoding="utf-8")
    return 0 if report.lost == 0 and report.doubled == 0 else 1


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds < 10 else f"{seconds:,.1f} s"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    return f"{n:,.1f} TB"


def render(report: Report) -> str:
    from services.common.regions import Tier

    from .engine import HOPS
    from .run import TIERS

    c = report.config
    mode = "event-driven" if c.poll_s == 0 else f"polling every {c.poll_s * 1000:.0f} ms"
    lines = [
        f"lianxin simulate: {c.scope}, {report.nodes['province']} provinces, {report.nodes['city']} cities, "
        f"{report.nodes['county']} counties; {c.window_s / 3600:g} h simulated from {c.start_s / 3600:g} h "
        f"(drained at {report.end_s / 3600:.2f} h); "
        f"links {mode}, {c.backend} stores, loss {c.links[Tier.COUNTY].loss:g}, {len(c.cuts)} cuts, seed {c.seed}",
        f"events made: {report.events:,}; calls {report.calls:,} ({report.failed_calls:,} failed, "
        f"{report.resent_items:,} items resent); lost {report.lost}, doubled {report.doubled}",
        "",
        f"{'lag (ms)':<22}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>11}{'events':>12}",
    ]
    for hop in HOPS:
        p50, p95, p99, top, n = report.percentiles(hop)
        lines.append(f"{hop:<22}{_ms(p50):>9}{_ms(p95):>9}{_ms(p99):>9}{_ms(top):>11}{n:>12,}")
    load = report.national_load()
    lines += [
        "",
        "national link (all provinces' reports)",
        f"  events {load['events']:,.0f}; mean {load['mean_events_s']:,.1f} ev/s, "
        f"peak second {load['peak_events_s']:,.0f} ev/s, peak minute {load['peak_minute_events_s']:,.1f} ev/s",
        f"  bytes {_size(load['bytes'])}; mean {_size(load['mean_bytes_s'])}/s, "
        f"peak second {_size(load['peak_bytes_s'])}/s, peak minute {_size(load['peak_minute_bytes_s'])}/s",
    ]
    if report.quarantined:
        lines.append("quarantined: " + ", ".join(f"{k} {v:,}" for k, v in report.quarantined.most_common()))
    per_year = report.storage_per_year()
    if per_year and report.storage is not None:
        s = report.storage
        lines += [
            "",
            f"storage growth per year (exchange databases, measured per event on SQLite: origin {s.origin:,.0f} B, "
            f"receiver {s.receiver:,.0f} B, outbox {s.outbox:,.0f} B until pruned; national: bytes sent)",
        ]
        count = {"county": report.nodes["county"], "city": report.nodes["city"], "province": report.nodes["province"]}
        for tier in TIERS:
            nodes = count.get(tier, 1)
            total = per_year[tier]
            lines.append(
                f"  {tier:<10} {_size(total):>12} in all, {_size(total / nodes):>10} per node "
                f"({report.held[tier] * 86_400 / c.window_s:,.0f} events a day)"
            )
    lines += [
        "",
        f"run: {report.wall_s:,.0f} s wall, {report.cpu_s:,.0f} s CPU, {report.max_rss_mb:,.0f} MB max RSS",
    ]
    return "\n".join(lines)


def as_json(report: Report, argv: list[str]) -> dict[str, Any]:
    from .engine import HOPS

    c = report.config
    return {
        "command": " ".join(["lianxin", *argv[1:]]) if argv and argv[0].endswith("lianxin") else " ".join(argv),
        "config": {
            "scope": c.scope,
            "seed": c.seed,
            "hours": c.window_s / 3600,
            "from_hour": c.start_s / 3600,
            "backend": c.backend,
            "poll_s": c.poll_s,
            "relay_s": c.relay_s,
            "volume": asdict(c.volume),
            "links": {t.value: asdict(p) for t, p in c.links.items()},
            "cuts": [asdict(cut) for cut in c.cuts],
            "poison_rate": c.poison_rate,
        },
        "nodes": report.nodes,
        "events": report.events,
        "lost": report.lost,
        "doubled": report.doubled,
        "calls": report.calls,
        "failed_calls": report.failed_calls,
        "resent_items": report.resent_items,
        "quarantined": dict(report.quarantined),
        "lag_s": {
            hop: dict(zip(("p50", "p95", "p99", "max", "n"), report.percentiles(hop), strict=True)) for hop in HOPS
        },
        "national": report.national_load(),
        "held_events": dict(report.held),
        "storage_per_event": asdict(report.storage) if report.storage else None,
        "storage_per_year_bytes": report.storage_per_year(),
        "run": {"wall_s": report.wall_s, "cpu_s": report.cpu_s, "max_rss_mb": report.max_rss_mb},
    }
