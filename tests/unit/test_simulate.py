"""The national simulation (bench/simulate): deterministic, cuts catch up exactly, poison judged like the real store."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from bench.simulate.engine import Cut, Entry, ProvinceSim, SimConfig, simulate_province
from bench.simulate.sizes import envelope
from bench.simulate.storage import measure
from bench.simulate.topology import SICHUAN, federation
from bench.simulate.volume import VolumeModel, size_mix
from services.cli import main
from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.common.regions import RegionTree, Tier
from services.exchange import domain
from services.exchange.ports import ENVELOPE, Item
from services.exchange.store import ExchangeStore

FED = federation("sichuan")
PROVINCE = FED.provinces[0]
# The default volume: Sichuan's online petitions and its 12345 at a third of Beijing's rate per resident
# (about 1,000 events in the first quarter hour of the day).
BUSY = VolumeModel()
BUSIEST = max(FED.counties(SICHUAN), key=FED.county_weight.__getitem__)


def _run(config: SimConfig) -> tuple[object, ...]:
    r = simulate_province(FED, PROVINCE, config)
    return r.events, r.calls, r.failed_calls, tuple(float(a.sum()) for a in r.lags.values()), r.end_s


def test_the_federation_has_the_national_shape_and_sichuans_real_codes() -> None:
    national = federation("national")
    assert national.count(Tier.PROVINCE) == 31
    assert 330 <= national.count(Tier.CITY) <= 350
    assert 2800 <= national.count(Tier.COUNTY) <= 2900
    shipped = RegionTree.load()
    assert set(FED.regions.subtree(SICHUAN)) == set(shipped.subtree(SICHUAN))
    assert national.regions.parent("511102") == "511100"


def test_the_same_seed_gives_the_same_day_and_another_seed_another() -> None:
    base = SimConfig(scope="sichuan", volume=BUSY, day_s=900)
    first, again = _run(base), _run(base)
    assert first == again
    other = SimConfig(scope="sichuan", volume=BUSY, day_s=900, seed=2)
    assert _run(other) != first


def test_a_cut_link_catches_up_with_nothing_lost_or_doubled() -> None:
    config = SimConfig(
        scope="sichuan",
        volume=BUSY,
        day_s=2400,
        cuts=[Cut(BUSIEST, 300, 1200), Cut("510100", 400, 1000), Cut(SICHUAN, 200, 500)],
    )
    result = simulate_province(FED, PROVINCE, config)
    assert result.failed_calls > 0  # the cut was felt: calls timed out and were sent again
    assert result.applied == result.expected
    assert result.expected["national"] == result.events  # every event made reached the national system
    assert result.doubled == 0
    assert not result.quarantined
    # Events made while 成都市 was cut waited for its link: the cut's length at most, and the backoff.
    assert 500 < float(result.lags["city→province"].max()) < 600 + 10 + 5
    assert float(result.lags["county→city"].max()) > 300


def test_lost_messages_are_resent_and_never_applied_twice() -> None:
    config = SimConfig(scope="sichuan", volume=BUSY, day_s=900)
    config.links = {tier: replace(profile, loss=0.05) for tier, profile in config.links.items()}
    result = simulate_province(FED, PROVINCE, config)
    assert result.resent_items > 0  # replies were lost after the receiver had stored the batch
    assert result.applied == result.expected and result.doubled == 0


def _store(tmp_path: Path, node: str) -> ExchangeStore:
    engine = make_engine(f"sqlite:///{tmp_path / f'{node}.db'}", service="exchange")
    upgrade(engine, "exchange")
    return ExchangeStore(
        make_session_factory(engine), node=node, regions=RegionTree.load(), clock=lambda: datetime.now(UTC)
    )


def test_a_poisoned_event_quarantines_its_cases_later_events_exactly_like_the_real_store(tmp_path: Path) -> None:
    # Two cases at 511102; the second event of the first case names a forged owner (the province).
    plan = [
        ("A", 1, "case_registered", "511102"),
        ("B", 1, "case_registered", "511102"),
        ("A", 2, "work_order_created", SICHUAN),
        ("A", 3, "changed", "511102"),
        ("B", 2, "work_order_created", "511102"),
        ("A", 4, "closed", "511102"),
    ]
    bodies: list[Item] = []
    entries: list[Entry] = []
    for case, number, size_class, owner in plan:
        case_id = f"511102-20261206-00000{'AB'.index(case) + 1}"
        env = envelope(size_class, case_id=case_id, node="511102", event_id=f"{case_id}#{number}")
        env.owner_node = owner
        bodies.append(Item(len(bodies) + 1, ENVELOPE, env.SerializeToString(), number))
        event = domain.InboundEvent(
            env.event_id, case_id, env.version, env.owner_epoch, owner, "511102", size_class, number
        )
        entries.append(Entry(event, 300, 300, 0.0, 0.0, True))
    # The real store, in two pushes (the second resends the first batch's last item, a lost ack).
    real = _store(tmp_path, "511100")
    real.receive_push("511102", bodies[:3])
    real.receive_push("511102", bodies[2:])
    held, _ = real.list_quarantine()
    stored = {h.event_id for h in real.holdings()}
    # The simulation's receiver, the same two pushes.
    sim = ProvinceSim(FED, PROVINCE, SimConfig(scope="sichuan"))
    city, county = sim.nodes["511100"], sim.nodes["511102"]
    county.log = entries
    sim.receive_push(city, county, 1, entries[:3], 1.0)
    sim.receive_push(city, county, 3, entries[2:], 2.0)
    assert [reason for _, _, reason in city.quarantine] == [row.reason for row in held]
    kinds = [reason.split(":")[0] for _, _, reason in city.quarantine]
    assert kinds == ["forged owner", "sequence gap", "sequence gap"]
    assert city.stored == stored == {"511102-20261206-000001#1", "511102-20261206-000002#1", "511102-20261206-000002#2"}
    assert city.cursors["511102"] == 6


def test_poison_in_a_day_is_quarantined_at_the_city_and_nothing_else_is_lost() -> None:
    result = simulate_province(FED, PROVINCE, SimConfig(scope="sichuan", volume=BUSY, day_s=900, poison_rate=0.01))
    assert result.quarantined["forged owner"] > 0
    assert set(result.quarantined) <= {"forged owner", "sequence gap"}
    assert result.quarantined_by_tier == {"city": sum(result.quarantined.values())}
    assert result.applied == result.expected and result.doubled == 0


def test_event_driven_links_are_faster_than_polling() -> None:
    polling = simulate_province(FED, PROVINCE, SimConfig(scope="sichuan", volume=BUSY, day_s=900))
    waiting = simulate_province(FED, PROVINCE, SimConfig(scope="sichuan", volume=BUSY, day_s=900, poll_s=0, relay_s=0))
    assert np.median(waiting.lags["county→province"]) < np.median(polling.lags["county→province"]) / 3


def test_the_store_grows_more_per_event_at_a_receiver_than_at_the_origin() -> None:
    storage = measure([("case_registered", 1.0), ("closed", 1.0)], events=200)
    assert 0 < storage.origin < storage.receiver


def test_lianxin_simulate_runs_and_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.json"
    args = ["--scope", "sichuan", "--hours", "0.25", "--no-storage", "--cut", "511102:5m:3m", "--json", str(out)]
    status = main(["simulate", *args])
    printed = capsys.readouterr().out
    assert status == 0
    assert "county→province" in printed and "national link" in printed and "lost 0, doubled 0" in printed
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["lost"] == 0 and figures["events"] > 0 and figures["config"]["cuts"][0]["node"] == "511102"


def test_a_bad_option_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--scope", "sichuan", "--cut", "999999:1h:1h", "--no-storage"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lianxin simulate: --cut 999999:1h:1h: 999999 is not a node of the sichuan scope"]


def test_the_storage_mix_follows_the_lifecycles() -> None:
    mix = size_mix(VolumeModel().daily_cases(SICHUAN, PROVINCE.population_m))
    assert abs(sum(mix.values()) - 1) < 1e-9
    assert mix["case_registered"] == mix["work_order_created"] == mix["closed"]  # every case has one of each
    assert mix["case_handed_off"] < 0.01


def test_a_window_later_in_the_day_starts_warm_and_quarantines_nothing() -> None:
    # The nodes know each case's earlier events (their up-log numbers and owner epochs), as their
    # databases would: a case's first event in the window is judged after them, not as a gap.
    config = SimConfig(scope="sichuan", start_s=9 * 3600, day_s=9 * 3600 + 300)
    result = simulate_province(FED, PROVINCE, config)
    assert result.events > 1000
    assert not result.quarantined
    assert result.applied == result.expected and result.doubled == 0
