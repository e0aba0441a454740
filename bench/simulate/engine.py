"""The discrete-event engine: county → city → province → national links running the real exchange rules.

Simulated, with their costs: the outbox relay (a tick), the link pass (a timer tick or, event-driven,
at once), each PushEvents call (latency, bandwidth, loss, cuts, the 5 s deadline), the receiver's
store (one batch at a time, a fixed cost per batch and per event) and the province's national link.

Real, called exactly as the services call them (``services.exchange.domain``): the up-log's per-case
numbering (``number_case_events``), the batch's byte limit (``batch_length``), the receiver's resend
filter and acknowledgement (``fresh_positions``), judging (``judge_batch``: origin, owner, epoch,
sequence gaps → quarantine), the known epoch (``epochs_to_note``), cursors that never move back
(``advance_cursor``), the national cursor over the acknowledged prefix (``acked_prefix``) and the
link's backoff after a failed call (``backoff_delay``).

Provinces are independent up to the national system, so a run simulates one province at a time
(``simulate_province``) and adds their national traffic up.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from services.common.regions import RegionTree, Tier
from services.exchange import domain

from .sizes import CALL_OVERHEAD_BYTES, envelope_bytes, report_bytes
from .topology import Federation, Province
from .volume import DAY_S, ESCALATION_AT, Lifecycles, VolumeModel, lifecycles

ITEM_OVERHEAD_BYTES = 12  # an ExchangeItem's position and case sequence and the field tags
HOPS = ("county→city", "city→province", "province→national", "county→province", "county→national")


@dataclass(frozen=True)
class LinkProfile:
    """The network between a tier and the one above (one way)."""

    latency_ms: float
    bandwidth_mbit: float
    loss: float = 0.0  # share of requests, and of replies, that never arrive (the caller waits for its deadline)
    jitter: float = 0.3  # lognormal sigma of the latency


@dataclass(frozen=True)
class StoreCost:
    """Time a receiver's store takes for one PushEvents batch (one transaction): fixed + per event, seconds."""

    batch_s: float
    event_s: float

    def of(self, events: int) -> float:
        return self.batch_s + events * self.event_s


# Per-event costs of the receiving store measured by bench.exchange.replication (docs/exchange.md,
# "Figures": catch-up 10,344 ev/s SQLite and 5,974 ev/s PostgreSQL with batches of 500, the parent
# running exchange alone); the fixed part is a transaction of a handful of statements.
STORE_COSTS = {
    "sqlite": StoreCost(batch_s=0.002, event_s=1 / 10_344),
    "postgres": StoreCost(batch_s=0.004, event_s=1 / 5_974),
}


@dataclass(frozen=True)
class Cut:
    """The link from ``node`` to its parent (or the province's national link) is down in [start, end) seconds."""

    node: str
    start_s: float
    end_s: float


@dataclass
class SimConfig:
    scope: str = "national"
    seed: int = 1
    volume: VolumeModel = field(default_factory=VolumeModel)
    backend: str = "postgres"
    # Today's links: a timer pass every 0.2 s and an outbox relay polling every 0.2 s. Event-driven
    # links (issue 21) are poll_s = relay_s = 0: a pass starts when something is appended.
    poll_s: float = 0.2
    relay_s: float = 0.2
    batch: int = domain.BATCH_ITEMS
    max_batches: int = 20  # per pass (ParentLink, NationalLink)
    national_batch: int = 200
    deadline_s: float = 5.0
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0
    links: dict[Tier, LinkProfile] = field(
        default_factory=lambda: {
            Tier.COUNTY: LinkProfile(latency_ms=5, bandwidth_mbit=20, loss=0.001),
            Tier.CITY: LinkProfile(latency_ms=8, bandwidth_mbit=100, loss=0.001),
            Tier.PROVINCE: LinkProfile(latency_ms=20, bandwidth_mbit=100, loss=0.001),
        }
    )
    national_cost: StoreCost = field(default_factory=lambda: StoreCost(batch_s=0.004, event_s=1 / 5_974))
    cuts: list[Cut] = field(default_factory=list)
    poison_rate: float = 0.0  # share of county events sent with a forged owner (quarantined at the city)
    day_s: float = DAY_S  # simulate the day up to this second (shorter for tests)
    start_s: float = 0.0  # ... from this one: the nodes start knowing everything before it (a warm window)

    @property
    def window_s(self) -> float:
        return max(1.0, self.day_s - self.start_s)

    @property
    def store_cost(self) -> StoreCost:
        return STORE_COSTS[self.backend]


class Entry:
    """One up-log row: the event as this node numbered it, its sizes, when it was made and appended here."""

    __slots__ = ("appended", "county_origin", "created", "event", "nbytes", "rbytes")

    def __init__(
        self, event: domain.InboundEvent, nbytes: int, rbytes: int, created: float, appended: float, county: bool
    ) -> None:
        self.event = event
        self.nbytes = nbytes
        self.rbytes = rbytes
        self.created = created
        self.appended = appended
        self.county_origin = county


class Node:
    """A regional node's exchange state: its up-log, and as a receiver its cursors, case knowledge and quarantine."""

    def __init__(self, code: str, tier: Tier) -> None:
        self.code = code
        self.tier = tier
        self.log: list[Entry] = []
        self.log_base = 0  # position of log[0] is log_base + 1
        self.last: dict[str, int] = {}  # the up-log's last number per case
        self.pending: list[Entry] = []  # committed, not yet relayed to the up-log
        self.relay_at: float | None = None
        self.busy_until = 0.0
        self.cursors: dict[str, int] = {}  # child_up cursor per child
        self.sequences: dict[str, dict[str, int]] = {}  # per child: case -> last sequence stored (replica)
        self.epochs: dict[str, tuple[int, str]] = {}  # case_epoch
        self.stored: set[str] = set()  # event ids of the replicas
        self.quarantine: list[tuple[str, str, str]] = []  # (child, event id, reason)
        self.link: Link | None = None
        self.applied = 0

    def head(self) -> int:
        return self.log_base + len(self.log)


class Link:
    """A child's link up (ParentLink, or the province's NationalLink when ``parent`` is None)."""

    def __init__(self, child: Node, parent: Node | None, profile: LinkProfile, cuts: list[tuple[float, float]]) -> None:
        self.child = child
        self.parent = parent
        self.profile = profile
        self.cuts = cuts
        self.cursor = 0
        self.failures = 0
        self.not_before = 0.0
        self.in_pass = False
        self.scheduled = False
        self.batches = 0
        self.call = 0  # id of the call in flight (0: none)
        self.phase = 0.0
        self.calls = 0
        self.failed_calls = 0
        self.resent_items = 0
        self.busy_until = 0.0  # the national side's ingestion of this province's reports
        self.answer_at = 0.0  # when the reply to the call in flight arrives (0: it does not)


@dataclass
class ProvinceResult:
    province: str
    events: int
    lags: dict[str, np.ndarray]
    national_events: np.ndarray  # per second of the run
    national_bytes: np.ndarray
    applied: dict[str, int]  # events applied per tier (city, province) and stored at the national system
    expected: dict[str, int]
    doubled: int
    quarantined: Counter[str]
    quarantined_by_tier: Counter[str]
    calls: int
    failed_calls: int
    resent_items: int
    bytes_by_tier: dict[str, int]  # envelope bytes held per tier (county: its own events; others: what arrived)
    events_by_tier: dict[str, int]
    end_s: float


class ProvinceSim:
    """One province's subtree and its national link, run from the day's lifecycles."""

    def __init__(self, federation: Federation, province: Province, config: SimConfig) -> None:
        self.config = config
        self.regions: RegionTree = federation.regions
        self.province = province
        self.rng = random.Random(f"{config.seed}:{province.code}")
        self.sizes = envelope_bytes()
        self.report_sizes = report_bytes()
        self.nodes: dict[str, Node] = {}
        cuts: dict[str, list[tuple[float, float]]] = {}
        for cut in config.cuts:
            cuts.setdefault(cut.node, []).append((cut.start_s, cut.end_s))
        for code in self.regions.subtree(province.code):
            self.nodes[code] = Node(code, self.regions.get(code).tier)
        for code, node in self.nodes.items():
            parent_code = self.regions.parent(code)
            parent = self.nodes[parent_code] if parent_code else None
            node.link = Link(node, parent, config.links[node.tier], cuts.get(code, []))
            node.link.phase = self.rng.random() * config.poll_s if config.poll_s else 0.0
        self.queue: list[tuple[float, int, Callable[..., None], Any]] = []
        self.counter = itertools.count()
        self.lags: dict[str, list[float]] = {hop: [] for hop in HOPS}
        self.national_events: list[int] = []
        self.national_bytes: list[int] = []
        self.national_stored: set[str] = set()
        self.national_doubled = 0
        self.first_today: np.ndarray = np.zeros(0, dtype=np.int64)
        self.lc: Lifecycles | None = None
        self.day_dates: dict[int, str] = {}
        self.now = 0.0
        # City events of escalated cases waiting for the county's hand-off to reach the city: the
        # city's services act on the hand-off replica, so they cannot write before it arrives.
        self.waiting: dict[str, list[tuple[int, int]]] = {}
        # Lognormal latency factors drawn once (sigma 1; a link raises them to its own sigma).
        self.jitter = [math.exp(self.rng.gauss(0.0, 1.0)) for _ in range(4096)]

    # ------------------------------------------------------------------ scheduling

    def at(self, t: float, fn: Callable[..., None], arg: Any = None) -> None:
        heapq.heappush(self.queue, (t, next(self.counter), fn, arg))

    def tick(self, t: float, period: float, phase: float) -> float:
        """The first timer tick at or after ``t``."""
        if period <= 0:
            return t
        return phase + math.ceil((t - phase) / period - 1e-9) * period

    # ------------------------------------------------------------------ the day's events

    def run(self, lc: Lifecycles) -> ProvinceResult:
        self.lc = lc
        begin = int(np.searchsorted(lc.times, self.config.start_s))
        end = int(np.searchsorted(lc.times, self.config.day_s))
        # A case's first event in the window: everything before it is in the nodes' databases already.
        first = np.full(len(lc.kind), 1 << 30, dtype=np.int64)
        np.minimum.at(first, lc.case[begin:end], lc.step[begin:end])
        self.first_today = first
        # Plain lists: indexing a numpy array per event costs more than the event's own work.
        times, cases, steps = (a[begin:end].tolist() for a in (lc.times, lc.case, lc.step))
        n = end - begin
        i = 0
        queue = self.queue
        while True:
            next_event = times[i] if i < n else math.inf
            if queue and queue[0][0] <= next_event:
                t, _, fn, arg = heapq.heappop(queue)
                self.now = t
                fn(arg, t)
            elif i < n:
                self.now = next_event
                self.emit(cases[i], steps[i], next_event)
                i += 1
            else:
                break
        return self.result(n)

    def case_id(self, case: int) -> str:
        lc = self.lc
        assert lc is not None
        day = int(lc.day[case])
        stamp = self.day_dates.get(day)
        if stamp is None:
            stamp = self.day_dates[day] = (date(2026, 12, 7) + timedelta(days=day)).strftime("%Y%m%d")
        return f"{lc.counties[int(lc.county[case])]}-{stamp}-{case:07d}"

    def prior(self, case: int, tier: Tier) -> int:
        """Events of the case before the day that passed through a node of ``tier`` (its database, warm)."""
        lc = self.lc
        if lc is None or case >= len(self.first_today):
            return 0  # a case made outside the day's lifecycles (tests): nothing before
        first = int(self.first_today[case])
        if tier is Tier.COUNTY and lc.escalated[case]:
            return min(first, ESCALATION_AT + 1)
        return first

    def prior_epoch(self, case: int) -> tuple[int, str] | None:
        lc = self.lc
        if lc is None or case >= len(self.first_today):
            return None
        first = int(self.first_today[case])
        if first == 0:
            return None
        county = lc.counties[int(lc.county[case])]
        if lc.escalated[case] and first > ESCALATION_AT:
            return 2, self.regions.parent(county) or ""
        return 1, county

    def emit(self, case: int, step: int, t: float) -> None:
        """A service commits a case event at its node (outbox), to be relayed to the up-log."""
        lc = self.lc
        assert lc is not None
        steps = lc.steps(case)
        county = lc.counties[int(lc.county[case])]
        escalated = bool(lc.escalated[case])
        kind = steps[step]
        origin, owner, epoch, new_epoch = county, county, 1, 0
        if escalated and step > ESCALATION_AT:
            origin = owner = self.regions.parent(county) or county
            epoch = 2
            hand_off = f"{self.case_id(case)}#{ESCALATION_AT}"
            if self.first_today[case] <= ESCALATION_AT and hand_off not in self.nodes[origin].stored:
                self.waiting.setdefault(hand_off, []).append((case, step))
                return
        elif escalated and step == ESCALATION_AT:
            new_epoch = 2
        if self.config.poison_rate and not escalated and self.rng.random() < self.config.poison_rate:
            owner = self.province.code  # a forged owner: the province is not under the county
        case_id = self.case_id(case)
        node = self.nodes[origin]
        size_class = kind.size or kind.event_type
        event = domain.InboundEvent(
            event_id=f"{case_id}#{step}",
            case_id=case_id,
            version=step + 1,
            owner_epoch=epoch,
            owner_node=owner,
            origin_node=origin,
            event_type=kind.event_type,
            case_sequence=0,  # numbered when the relay appends it to the up-log
            new_owner_epoch=new_epoch,
        )
        node.pending.append(
            Entry(event, self.sizes[size_class], self.report_sizes[size_class], t, t, node.tier is Tier.COUNTY)
        )
        if node.relay_at is None:
            relay = self.config.relay_s
            node.relay_at = t + (self.rng.random() * relay if relay else 0.0)
            self.at(node.relay_at, self.relay, node)

    def relay(self, node: Node, t: float) -> None:
        """The outbox relay publishes; exchange appends each event to the up-log, numbered per case."""
        entries, node.pending, node.relay_at = node.pending, [], None
        self.append_up(node, entries, t)

    def append_up(self, node: Node, entries: list[Entry], t: float) -> None:
        if not entries:
            return
        for entry in entries:
            case_id = entry.event.case_id
            if case_id not in node.last:
                node.last[case_id] = self.prior(self.case_index(case_id), node.tier)
        numbers = domain.number_case_events([e.event.case_id for e in entries], node.last)
        log = node.log
        for entry, number in zip(entries, numbers, strict=True):
            event = entry.event if entry.event.case_sequence == number else _renumbered(entry.event, number)
            log.append(Entry(event, entry.nbytes, entry.rbytes, entry.created, t, entry.county_origin))
        self.wake(node.link, t)

    @staticmethod
    def case_index(case_id: str) -> int:
        return int(case_id.rsplit("-", 1)[1])

    # ------------------------------------------------------------------ the link

    def wake(self, link: Link | None, t: float) -> None:
        if link is None or link.in_pass or link.scheduled:
            return
        start = self.tick(max(t, link.not_before), self.config.poll_s, link.phase)
        link.scheduled = True
        self.at(start, self.pass_start, link)

    def pass_start(self, link: Link, t: float) -> None:
        link.scheduled = False
        link.in_pass = True
        link.batches = 0
        self.send(link, t)

    def send(self, link: Link, t: float) -> None:
        child = link.child
        offset = link.cursor - child.log_base
        national = link.parent is None
        limit = self.config.national_batch if national else self.config.batch
        window = child.log[offset : offset + limit]
        if not window:
            self.end_pass(link, t, ok=True)
            return
        count = domain.batch_length([e.nbytes for e in window])
        batch = window[:count]
        first = link.cursor + 1
        size = sum(e.rbytes if national else e.nbytes for e in batch) + ITEM_OVERHEAD_BYTES * count
        size += CALL_OVERHEAD_BYTES
        link.calls += 1
        link.call = call = link.calls
        if self.lost(link, t):
            self.at(t + self.config.deadline_s, self.timeout, (link, call))
            return
        arrival = t + self.latency(link) + size * 8 / (link.profile.bandwidth_mbit * 1e6)
        self.at(arrival, self.arrive, (link, call, first, batch, size, t))

    def latency(self, link: Link) -> float:
        p = link.profile
        return float(p.latency_ms / 1000 * self.jitter[self.rng.getrandbits(12)] ** p.jitter)

    def lost(self, link: Link, t: float) -> bool:
        for start, end in link.cuts:
            if start <= t < end:
                return True
        loss = link.profile.loss
        return loss > 0 and self.rng.random() < loss

    def arrive(self, args: tuple[Link, int, int, list[Entry], int, float], t: float) -> None:
        """The request reached the receiver: it is stored when the store is free; the caller hears
        the reply then, or gives up at its deadline (reply lost, or the store too slow)."""
        link, call, _, batch, _, sent = args
        cost = self.config.national_cost if link.parent is None else self.config.store_cost
        # The receiver's store takes one batch at a time (the national side: per province).
        holder: Node | Link = link.parent if link.parent is not None else link
        finish = max(t, holder.busy_until) + cost.of(len(batch))
        holder.busy_until = finish
        self.at(finish, self.apply, args)
        answered = finish + self.latency(link)
        if self.lost(link, finish) or answered > sent + self.config.deadline_s:
            self.at(max(t, sent + self.config.deadline_s), self.timeout, (link, call))
        else:
            link.answer_at = answered

    def apply(self, args: tuple[Link, int, int, list[Entry], int, float], t: float) -> None:
        link, call, first, batch, size, _ = args
        if link.parent is None:
            acked = self.receive_national(link, first, batch, size, t)
        else:
            acked = self.receive_push(link.parent, link.child, first, batch, t)
        if link.call == call and link.answer_at:
            answered, link.answer_at = link.answer_at, 0.0
            self.at(answered, self.reply, (link, call, acked, first + len(batch) - 1))

    def reply(self, args: tuple[Link, int, int, int], t: float) -> None:
        link, call, acked, last = args
        if link.call != call:
            return  # the caller gave up on this call (deadline) already
        link.call = 0
        link.cursor = domain.advance_cursor(link.cursor, acked)
        link.batches += 1
        child = link.child
        drop = link.cursor - child.log_base
        if drop > 4096:  # what the parent acknowledged is no longer needed in memory
            del child.log[:drop]
            child.log_base = link.cursor
        if acked < last or link.batches >= self.config.max_batches or link.cursor >= child.head():
            self.end_pass(link, t, ok=True)
        else:
            self.send(link, t)

    def timeout(self, args: tuple[Link, int], t: float) -> None:
        link, call = args
        if link.call != call:
            return
        link.call = 0
        link.failed_calls += 1
        link.failures += 1
        delay = domain.backoff_delay(
            link.failures, base_s=self.config.backoff_base_s, cap_s=self.config.backoff_cap_s, rng=self.rng
        )
        link.not_before = t + delay
        self.end_pass(link, t, ok=False)

    def end_pass(self, link: Link, t: float, *, ok: bool) -> None:
        link.in_pass = False
        if ok:
            link.failures = 0
            # The pass then pulls down (ParentLink.pull_down, FetchTransfers): one more round trip
            # before the next pass can start.
            link.not_before = t + 2 * self.latency(link)
        if link.cursor < link.child.head():
            self.wake(link, t)

    # ------------------------------------------------------------------ the receivers (real rules)

    def receive_push(self, parent: Node, child: Node, first: int, batch: list[Entry], t: float) -> int:
        """``ExchangeStore.receive_push`` over the simulated tables: resends skipped, judged, applied or quarantined."""
        stored = parent.cursors.get(child.code, 0)
        indexes, acked = domain.fresh_positions(range(first, first + len(batch)), stored)
        if len(indexes) < len(batch):
            child.link.resent_items += len(batch) - len(indexes)  # type: ignore[union-attr]
        fresh = [batch[i] for i in indexes]
        events = [e.event for e in fresh]
        sequences = parent.sequences.setdefault(child.code, {})
        ledgers: dict[str, domain.CaseLedger] = {}
        for event in events:
            case_id = event.case_id
            if case_id in ledgers:
                continue
            last = sequences.get(case_id)
            if last is None:
                last = self.prior(self.case_index(case_id), child.tier) or None
            known = parent.epochs.get(case_id)
            if known is None and case_id not in parent.epochs:
                known = self.prior_epoch(self.case_index(case_id))
                if known is not None:
                    parent.epochs[case_id] = known
            ledgers[case_id] = domain.CaseLedger(last_sequence=last, known_epoch=known[0] if known else None)
        stored_ids = {e.event_id for e in events if e.event_id in parent.stored}
        epochs_before = {case_id: ledger.known_epoch for case_id, ledger in ledgers.items()}
        decisions = domain.judge_batch(
            events, child=child.code, receiver=parent.code, regions=self.regions, ledgers=ledgers, stored_ids=stored_ids
        )
        applied: list[Entry] = []
        for entry, decision in zip(fresh, decisions, strict=True):
            if decision.verdict is domain.Verdict.APPLY:
                applied.append(entry)
            elif decision.verdict is domain.Verdict.REFUSE:
                parent.quarantine.append((child.code, entry.event.event_id, decision.reason))
        if applied:
            for entry in applied:
                sequences[entry.event.case_id] = entry.event.case_sequence
                parent.stored.add(entry.event.event_id)
            noted = domain.epochs_to_note(
                [(e.event, parent.code if e.event.new_owner_epoch else "") for e in applied], epochs_before
            )
            parent.epochs.update(noted)
            parent.applied += len(applied)
            hop = self.lags["county→city" if child.tier is Tier.COUNTY else "city→province"]
            for entry in applied:
                hop.append(t - entry.appended)
            if parent.tier is Tier.PROVINCE:
                e2e = self.lags["county→province"]
                e2e.extend(t - e.created for e in applied if e.county_origin)
            self.append_up(parent, applied, t)
            if self.waiting and parent.tier is Tier.CITY:
                for entry in applied:
                    for case, step in self.waiting.pop(entry.event.event_id, ()):
                        self.emit(case, step, t)
        parent.cursors[child.code] = domain.advance_cursor(stored, acked)
        return acked

    def receive_national(self, link: Link, first: int, batch: list[Entry], size: int, t: float) -> int:
        """The national system stores each report once (by report id) and acknowledges them; the province's
        cursor moves over the acknowledged prefix (``NationalLink.report_up``)."""
        reports = [(first + i, e.event.event_id) for i, e in enumerate(batch)]
        acked_ids = {report_id for _, report_id in reports}
        second = int(t)
        while len(self.national_events) <= second:
            self.national_events.append(0)
            self.national_bytes.append(0)
        self.national_events[second] += len(batch)
        self.national_bytes[second] += size
        hop, e2e = self.lags["province→national"], self.lags["county→national"]
        for entry in batch:
            report_id = entry.event.event_id
            if report_id in self.national_stored:
                link.resent_items += 1
                continue
            self.national_stored.add(report_id)
            hop.append(t - entry.appended)
            if entry.county_origin:
                e2e.append(t - entry.created)
        return domain.acked_prefix(reports, acked_ids, link.cursor)

    # ------------------------------------------------------------------ figures

    def result(self, emitted: int) -> ProvinceResult:
        cities = [n for n in self.nodes.values() if n.tier is Tier.CITY]
        counties = [n for n in self.nodes.values() if n.tier is Tier.COUNTY]
        top = self.nodes[self.province.code]
        quarantined: Counter[str] = Counter()
        by_tier: Counter[str] = Counter()
        for node in self.nodes.values():
            for _, _, reason in node.quarantine:
                quarantined[reason.split(":", 1)[0]] += 1
                by_tier[node.tier.value] += 1
        county_events = sum(n.head() for n in counties)
        links = [n.link for n in self.nodes.values() if n.link is not None]
        # Everything a county made reaches the city unless quarantined there; the city's own and
        # the applied ones reach the province, and all of the province's up-log the national system.
        expected = {
            "city": county_events - by_tier["city"],
            "province": sum(n.head() for n in cities) - by_tier["province"],
            "national": top.head(),
        }
        applied = {
            "city": sum(n.applied for n in cities),
            "province": top.applied,
            "national": len(self.national_stored),
        }
        held = {
            "county": sum(e for e in (n.head() for n in counties)),
            "city": sum(n.head() for n in cities),
            "province": top.head(),
            "national": len(self.national_stored),
        }
        return ProvinceResult(
            province=self.province.code,
            events=emitted,
            lags={hop: np.asarray(values, dtype=np.float32) for hop, values in self.lags.items()},
            national_events=np.asarray(self.national_events, dtype=np.int64),
            national_bytes=np.asarray(self.national_bytes, dtype=np.int64),
            applied=applied,
            expected=expected,
            doubled=sum(n.applied for n in self.nodes.values()) - sum(len(n.stored) for n in self.nodes.values()),
            quarantined=quarantined,
            quarantined_by_tier=by_tier,
            calls=sum(link.calls for link in links),
            failed_calls=sum(link.failed_calls for link in links),
            resent_items=sum(link.resent_items for link in links),
            bytes_by_tier={},
            events_by_tier=held,
            end_s=self.now,
        )


def _renumbered(event: domain.InboundEvent, number: int) -> domain.InboundEvent:
    return domain.InboundEvent(
        event.event_id,
        event.case_id,
        event.version,
        event.owner_epoch,
        event.owner_node,
        event.origin_node,
        event.event_type,
        number,
        event.new_owner_epoch,
    )


def simulate_province(federation: Federation, province: Province, config: SimConfig) -> ProvinceResult:
    counties = federation.counties(province.code)
    rng = np.random.default_rng([config.seed, int(province.code)])
    daily = config.volume.daily_cases(province.code, province.population_m)
    lc = lifecycles(counties, [federation.county_weight[c] for c in counties], daily, config.volume, rng)
    return ProvinceSim(federation, province, config).run(lc)
