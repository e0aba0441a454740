"""Run the simulation over every province (in worker processes when asked) and add the figures up."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from services.common.regions import Tier

from .engine import HOPS, ProvinceResult, SimConfig, simulate_province
from .sizes import envelope_bytes
from .storage import StoragePerEvent
from .topology import Federation, federation

TIERS = ("county", "city", "province", "national")


@dataclass
class Report:
    config: SimConfig
    nodes: dict[str, int]
    events: int
    lags: dict[str, np.ndarray]
    national_events: np.ndarray  # per second, all provinces
    national_bytes: np.ndarray
    applied: Counter[str]
    expected: Counter[str]
    doubled: int
    quarantined: Counter[str]
    calls: int
    failed_calls: int
    resent_items: int
    held: Counter[str]  # events each tier holds after the day (all its nodes)
    end_s: float
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    storage: StoragePerEvent | None = None
    provinces: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(max(0, self.expected[t] - self.applied[t]) for t in self.expected)

    def percentiles(self, hop: str) -> tuple[float, float, float, float, int]:
        values = self.lags[hop]
        if len(values) == 0:
            return (0.0, 0.0, 0.0, 0.0, 0)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return float(p50), float(p95), float(p99), float(values.max()), len(values)

    def national_load(self) -> dict[str, float]:
        start = int(self.config.start_s)  # the per-second bins count from the day's start
        events, sent = self.national_events[start:], self.national_bytes[start:]
        day = self.config.window_s
        minute = np.convolve(events, np.ones(60), mode="valid") / 60 if len(events) >= 60 else events
        minute_bytes = np.convolve(sent, np.ones(60), mode="valid") / 60 if len(sent) >= 60 else sent
        return {
            "events": float(events.sum()),
            "bytes": float(sent.sum()),
            "mean_events_s": float(events.sum()) / day,
            "mean_bytes_s": float(sent.sum()) / day,
            "peak_events_s": float(events.max(initial=0)),
            "peak_bytes_s": float(sent.max(initial=0)),
            "peak_minute_events_s": float(minute.max(initial=0)),
            "peak_minute_bytes_s": float(minute_bytes.max(initial=0)),
        }

    def storage_per_year(self) -> dict[str, float]:
        """Bytes a tier's exchange databases grow by in a year at this day's volume (all nodes of the tier)."""
        if self.storage is None:
            return {}
        scale = 365 * 86_400 / self.config.window_s
        envelope = float(np.mean(list(envelope_bytes().values())))
        per = {
            "county": self.storage.origin,
            "city": self.storage.receiver,
            "province": self.storage.receiver,
            "national": envelope,  # what the national system is sent (its own storage is its business)
        }
        return {tier: self.held[tier] * per[tier] * scale for tier in TIERS}


def _one(args: tuple[Federation, str, SimConfig]) -> ProvinceResult:
    fed, code, config = args
    province = next(p for p in fed.provinces if p.code == code)
    return simulate_province(fed, province, config)


def _results(fed: Federation, config: SimConfig, jobs: int) -> Iterator[ProvinceResult]:
    # Largest provinces first, so two workers finish together.
    order = sorted(fed.provinces, key=lambda p: -p.population_m)
    work = [(fed, p.code, config) for p in order]
    if jobs <= 1:
        yield from map(_one, work)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(_one, work)


def simulate(
    config: SimConfig,
    *,
    jobs: int = 1,
    storage: StoragePerEvent | None = None,
    progress: Callable[[ProvinceResult], None] | None = None,
) -> Report:
    started, cpu_started = time.perf_counter(), time.process_time()
    fed = federation(config.scope, seed=config.seed)
    lags: dict[str, list[np.ndarray]] = {hop: [] for hop in HOPS}
    national_events = np.zeros(0, dtype=np.int64)
    national_bytes = np.zeros(0, dtype=np.int64)
    applied: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    held: Counter[str] = Counter()
    events = calls = failed = resent = doubled = 0
    end = 0.0
    provinces: list[str] = []
    for result in _results(fed, config, jobs):
        provinces.append(result.province)
        events += result.events
        for hop, values in result.lags.items():
            lags[hop].append(values)
        national_events = _add(national_events, result.national_events)
        national_bytes = _add(national_bytes, result.national_bytes)
        applied.update(result.applied)
        expected.update(result.expected)
        quarantined.update(result.quarantined)
        held.update(result.events_by_tier)
        calls += result.calls
        failed += result.failed_calls
        resent += result.resent_items
        doubled += result.doubled
        end = max(end, result.end_s)
        if progress is not None:
            progress(result)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Report(
        config=config,
        nodes={tier.value: fed.count(tier) for tier in (Tier.PROVINCE, Tier.CITY, Tier.COUNTY)},
        events=events,
        lags={hop: np.concatenate(parts) if parts else np.zeros(0, np.float32) for hop, parts in lags.items()},
        national_events=national_events,
        national_bytes=national_bytes,
        applied=applied,
        expected=expected,
        doubled=doubled,
        quarantined=quarantined,
        calls=calls,
        failed_calls=failed,
        resent_items=resent,
        held=held,
        end_s=end,
        wall_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started + children.ru_utime + children.ru_stime,
        max_rss_mb=max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children.ru_maxrss) / 1024,
        storage=storage,
        provinces=provinces,
    )


def _add(total: np.ndarray, more: np.ndarray) -> np.ndarray:
    if len(more) > len(total):
        total = np.concatenate([total, np.zeros(len(more) - len(total), dtype=total.dtype)])
    total[: len(more)] += more
    return total


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
