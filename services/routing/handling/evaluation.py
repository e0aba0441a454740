"""第三方评价: the month's sample of closed cases drawn once, listed masked, rated once per case."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.personal_text import mask
from services.common.timeutil import to_utc
from services.routing.domain import State
from services.routing.evaluation import (
    EvaluationSample,
    SampleItem,
    UnitCount,
    check_month,
    check_month_begun,
    check_rating,
    check_rule,
    check_seed,
    new_sample,
)
from services.routing.handling.bookkeeping import checked_actor
from services.routing.handling.ports import Routing, RoutingUnitOfWork, UnitOfWorkFactory

log = logging.getLogger(__name__)


def draw_evaluation_sample(
    *,
    month: str,
    seed: str,
    percent: int,
    minimum: int,
    actor: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> tuple[EvaluationSample, list[SampleItem]]:
    """Draw the month's sample of the cases this node closed in it, once; each sampled case emits
    ``case_sampled`` (its next version), so every tier above knows what was sampled."""
    who = checked_actor(actor)
    month = check_month(month)
    rule = check_rule(percent, minimum)
    seed = check_seed(seed)
    now = to_utc(now)
    start, end = check_month_begun(month, now, routing.month_start_day)
    with uow_factory() as uow:
        known = uow.evaluation_sample(month)
        if known is not None:
            raise FailedPrecondition(
                f"the {month} sample was already drawn at {known.drawn_at:%Y-%m-%d %H:%M} UTC by {known.drawn_by} "
                f"with seed {known.seed}"
            )
        closed = uow.closed_between(start, min(end, now))
        sample, items, events = new_sample(
            closed, month=month, node=routing.node, seed=seed, rule=rule, actor=who, at=now
        )
        uow.save_evaluation_sample(sample, items)
        for event in events:
            uow.emit(event.case_id, [event])
        uow.commit()
    log.info("evaluation sample %s drawn: %d of %d closed cases", month, len(items), len(closed))
    return sample, items


@dataclass(frozen=True)
class SampleView:
    """A sampled case as the evaluation group sees it: personal data masked in every text."""

    item: SampleItem
    title: str
    body: str
    reply_text: str


def _masked(text: str) -> str:
    return mask(text).text if text else ""


def _views(uow: RoutingUnitOfWork, items: Sequence[SampleItem]) -> list[SampleView]:
    texts = uow.sampled_texts(items)
    out = []
    for item in items:
        title, body, reply = texts.get(item.case_id, ("", "", ""))
        out.append(SampleView(item, _masked(title), _masked(body), _masked(reply)))
    return out


def _with_rated(uow: RoutingUnitOfWork, sample: EvaluationSample) -> EvaluationSample:
    rated = uow.rated_by_unit(sample.month)
    sample.units = [UnitCount(u.unit_id, u.closed, u.sampled, rated.get(u.unit_id, 0)) for u in sample.units]
    return sample


def list_evaluation_sample(
    *, month: str, unrated_only: bool, after: tuple[str, int] | None, limit: int, uow_factory: UnitOfWorkFactory
) -> tuple[EvaluationSample, list[SampleView], int]:
    """A page of the month's sample (masked), with the sample's record and its counts."""
    month = check_month(month)
    with uow_factory() as uow:
        sample = uow.evaluation_sample(month)
        if sample is None:
            raise NotFound("evaluation sample", month)
        items, total = uow.sample_items(month, unrated_only=unrated_only, after=after, limit=limit)
        return _with_rated(uow, sample), _views(uow, items), total


def record_third_party_rating(
    *, month: str, case_id: str, actor: str, rating: str, comment: str, uow_factory: UnitOfWorkFactory, now: datetime
) -> SampleView:
    """The evaluation group's one rating of a sampled case; emits ``third_party_rated``."""
    who = checked_actor(actor)
    month = check_month(month)
    wanted = (case_id or "").strip()
    if not wanted:
        raise InvalidArgument("case_id", "the sampled case is required")
    rating, text = check_rating(rating, comment)
    now = to_utc(now)
    with uow_factory() as uow:
        item = uow.sample_item(month, wanted)
        if item is None:
            raise NotFound("sampled case", f"{wanted} of the {month} sample")
        order = uow.get(item.work_order_id)
        if order is not None and order.order.state is State.TRANSFERRED:
            raise FailedPrecondition(f"case {wanted} was handed to {order.order.transferred_to} since it was sampled")
        event = item.rate(rating, text, evaluator=who, at=now)
        uow.save_rating(item)
        uow.emit(wanted, [event])
        view = _views(uow, [item])[0]
        uow.commit()
    log.info("third-party rating recorded on %s of the %s sample", wanted, month)
    return view
