"""How much work a day brings: cases per resident by channel, each kind's events and when they happen.

The defaults (docs/scale.md, "The volume model"):

- online petitions (网上信访): about 700 a day in Sichuan (83.67 million residents), so 8.37 per
  million residents per day everywhere;
- 12345 hotline contacts: a centre like Beijing's takes about 68,000 a day for 21.89 million
  residents (3,106 per million). Beijing's 接诉即办 is the busiest in the country, so the default
  for every other province is a third of its rate per resident (``hotline_per_million``), and
  ``--hotline-per-million 3106`` plans for every province as busy as Beijing;
- most hotline contacts are answered on the call (a case registered, a work order opened and closed
  at once); ``hotline_dispatched_share`` of them become a work order for a unit, handled over days;
- a share of petitions and dispatched contacts is escalated to the city (上报): the hand-off raises
  the owner epoch and the city writes the case's later events.

A case's events happen over days (a petition's settlement within 60 days), so one simulated day
carries the events of cases registered on earlier days too: the generator draws every case whose
lifecycle reaches into the day and keeps the events that fall in it (the steady state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86_400.0

# Share of a day's contacts by hour (China Standard Time), a 12345 centre's typical curve: quiet
# at night, a morning peak at 9–11 and an afternoon one at 14–17.
HOURLY = (
    0.8, 0.5, 0.4, 0.3, 0.3, 0.5, 1.2, 2.8, 5.0, 6.8, 7.0, 6.5,
    4.8, 4.6, 6.0, 6.2, 6.0, 5.2, 4.2, 3.8, 3.4, 2.8, 2.0, 1.4,
)  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One event of a case's lifecycle: its type and how long after registration it happens (median, hours)."""

    event_type: str
    after_h: float
    size: str = ""  # the envelope size class (sizes.py); the event type by default


@dataclass(frozen=True)
class CaseKind:
    name: str
    steps: tuple[Step, ...]
    escalated_share: float = 0.0  # of these cases, escalated to the city after the work order (上报)


HOTLINE_DIRECT = CaseKind(
    "hotline answered on the call",
    (Step("case_registered", 0), Step("work_order_created", 0.02), Step("work_order_changed", 0.1, "closed")),
)
HOTLINE_DISPATCHED = CaseKind(
    "hotline dispatched to a unit",
    (
        Step("case_registered", 0),
        Step("work_order_created", 0.2),
        Step("work_order_changed", 4, "changed"),
        Step("work_order_changed", 24, "changed"),
        Step("work_order_changed", 72, "replied"),
        Step("work_order_changed", 76, "closed"),
        Step("case_evaluated", 120),
    ),
    escalated_share=0.02,
)
PETITION = CaseKind(
    "online petition",
    (
        Step("case_registered", 0),
        Step("work_order_created", 2),
        Step("work_order_changed", 48, "changed"),
        Step("work_order_changed", 120, "changed"),
        Step("deadline_warning", 300),
        Step("work_order_changed", 480, "replied"),
        Step("work_order_changed", 500, "closed"),
        Step("case_evaluated", 600),
    ),
    escalated_share=0.05,
)
ESCALATION = Step("case_handed_off", 0.0)


@dataclass(frozen=True)
class VolumeModel:
    petitions_per_million: float = 700 / 83.67
    hotline_per_million: float = 68_000 / 21.89 / 3
    beijing_hotline_per_million: float = 68_000 / 21.89
    hotline_dispatched_share: float = 0.35
    spread: float = 0.5  # lognormal sigma of each step's delay around its median
    hourly: tuple[float, ...] = HOURLY

    def daily_cases(self, province_code: str, population_m: float) -> dict[CaseKind, float]:
        hotline = self.beijing_hotline_per_million if province_code == "110000" else self.hotline_per_million
        contacts = population_m * hotline
        return {
            PETITION: population_m * self.petitions_per_million,
            HOTLINE_DIRECT: contacts * (1 - self.hotline_dispatched_share),
            HOTLINE_DISPATCHED: contacts * self.hotline_dispatched_share,
        }


def size_mix(daily: dict[CaseKind, float]) -> dict[str, float]:
    """Share of each envelope size class among the events these cases make over their lifecycles."""
    counts: dict[str, float] = {}
    for kind, per_day in daily.items():
        steps = [*kind.steps, ESCALATION] if kind.escalated_share else list(kind.steps)
        for step in steps:
            weight = per_day * (kind.escalated_share if step is ESCALATION else 1.0)
            counts[step.size or step.event_type] = counts.get(step.size or step.event_type, 0.0) + weight
    total = sum(counts.values())
    return {size: n / total for size, n in counts.items()}


@dataclass
class Lifecycles:
    """The events of a province's cases that fall into the simulated day, as arrays sorted by time.

    Event arrays: ``times``, ``case``, ``step``; case arrays (by case index): ``kind``, ``county``,
    ``day`` and ``escalated``. ``steps(case)`` is the case's lifecycle.
    """

    kinds: list[CaseKind]
    counties: list[str]
    times: np.ndarray  # seconds into the day the event is committed at its node
    case: np.ndarray  # the event's case (index into the case arrays)
    step: np.ndarray  # 0-based index of the event in its case's lifecycle
    kind: np.ndarray
    county: np.ndarray
    day: np.ndarray  # day of registration relative to the simulated day (0 = today, -3 = three days before)
    escalated: np.ndarray

    def steps(self, case: int) -> tuple[Step, ...]:
        steps = self.kinds[int(self.kind[case])].steps
        if self.escalated[case]:
            # 上报 between the work order and the unit's first step: the city handles the rest.
            return (*steps[:ESCALATION_AT], ESCALATION, *steps[ESCALATION_AT:])
        return steps


ESCALATION_AT = 2  # lifecycle index of the escalation in an escalated case


def diurnal(rng: np.random.Generator, n: int, hourly: tuple[float, ...]) -> np.ndarray:
    """``n`` times of day (seconds) following the hourly curve."""
    weights = np.cumsum(np.asarray(hourly, dtype=float))
    hours = np.searchsorted(weights / weights[-1], rng.random(n), side="right")
    return (np.minimum(hours, len(hourly) - 1) + rng.random(n)) * 3600.0


# A step's delay is its median times a lognormal factor clipped to this range (no case is handled
# in no time, none takes more than four times the usual).
DELAY_FACTOR = (0.2, 4.0)


# A step's delay is its median times a lognormal factor clipped to this range (no case is handled
# in no time, none takes more than four times the usual).
DELAY_FACTOR = (0.2, 4.0)


def lifecycles(
    counties: list[str],
    weights: list[float],
    daily: dict[CaseKind, float],
    model: VolumeModel,
    rng: np.random.Generator,
) -> Lifecycles:
    """Draw a province's cases whose events reach into the day (registered up to a lifecycle ago).

    ``daily``: cases per day of each kind in the province, spread over ``counties`` by ``weights``.
    """
    p = np.asarray(weights, dtype=float)
    p = p / p.sum()
    kinds = list(daily)
    parts: list[tuple[np.ndarray, ...]] = []
    offset = 0
    for number, (kind, per_day) in enumerate(daily.items()):
        span_days = int(np.ceil(max(s.after_h for s in kind.steps) * DELAY_FACTOR[1] / 24)) + 1
        n = int(rng.poisson(per_day * (span_days + 1)))
        if n == 0:
            continue
        day = rng.integers(-span_days, 1, size=n)
        where = rng.choice(len(counties), size=n, p=p)
        registered = day * DAY_S + diurnal(rng, n, model.hourly)
        # Each later step: its median delay spread lognormally; a step an hour or more away happens
        # at a time of day drawn from the curve (people work office hours).
        width = len(kind.steps)
        at = np.empty((n, width + 1))  # one more column: the escalation's place (ESCALATION_AT)
        at[:, 0] = registered
        column = 1
        for j, step in enumerate(kind.steps[1:], start=1):
            if j == ESCALATION_AT:
                column += 1
            factor = np.clip(rng.lognormal(0.0, model.spread, n), *DELAY_FACTOR)
            delay = step.after_h * 3600.0 * factor
            t = registered + delay
            far = delay >= 3600.0
            t[far] = np.floor(t[far] / DAY_S) * DAY_S + diurnal(rng, int(far.sum()), model.hourly)
            at[:, column] = np.maximum(t, at[:, column - 1 - (j == ESCALATION_AT)] + 1.0)  # events keep their order
            column += 1
        escalated = (rng.random(n) < kind.escalated_share) & (width > ESCALATION_AT)
        if width > ESCALATION_AT:
            at[:, ESCALATION_AT] = (at[:, ESCALATION_AT - 1] + at[:, ESCALATION_AT + 1]) / 2
        else:
            at[:, ESCALATION_AT:] = np.roll(at[:, ESCALATION_AT:], -1, axis=1)
        inside = (at >= 0.0) & (at < DAY_S)
        if width > ESCALATION_AT:
            inside[~escalated, ESCALATION_AT] = False  # no escalation: that place is empty
        else:
            inside[:, width] = False
        rows, cols = np.nonzero(inside)
        # The lifecycle index: an unescalated case has no event at the escalation's place.
        steps = cols - ((~escalated[rows]) & (cols > ESCALATION_AT))
        parts.append((at[rows, cols], rows + offset, steps, np.full(n, number), where, day, escalated))
        offset += n
    times = np.concatenate([q[0] for q in parts])
    order = np.argsort(times, kind="stable")
    return Lifecycles(
        kinds,
        counties,
        times[order],
        np.concatenate([q[1] for q in parts])[order],
        np.concatenate([q[2] for q in parts])[order],
        np.concatenate([q[3] for q in parts]),
        np.concatenate([q[4] for q in parts]),
        np.concatenate([q[5] for q in parts]),
        np.concatenate([q[6] for q in parts]),
    )
