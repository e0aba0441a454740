"""IntakeService gRPC adapter: translate requests, call the handlers, translate answers back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from prometheus_client import Counter

from services.common.casepass import Mac, issue_case_pass
from services.common.db import read_only
from services.common.errors import DomainError, InvalidArgument
from services.common.request_rules import check_request
from services.common.security import OFFICE, current_principal
from services.common.timeutil import from_timestamp, to_timestamp
from services.intake import handlers, mapping
from services.intake.domain import CATEGORIES, CHANNELS
from services.intake.handlers import CaseFilter, IntakeDeps, IntakeUnitOfWork
from services.intake.notices import OPT_OUT_FLAG

# What ClassifyText / LocateText need beyond a submit: the model's confidence and the candidates.
ScoredCategoriser = Callable[[str], tuple[str, float]]
CandidateLocator = Callable[[str, str], tuple[str, bool, list[str]]]


CASES_RECEIVED = Counter(
    "lianxin_cases_received_total", "Cases registered at this node, by channel and category", ["channel", "category"]
)


def initialise_received_metrics() -> None:
    """Every channel × category series at zero from the start, so ``increase()`` sees the first case
    of a kind as an increase instead of as the series appearing (nine channels × eight categories
    and "unclassified": bounded)."""
    for channel in CHANNELS:
        for category in (*CATEGORIES, "unclassified"):
            CASES_RECEIVED.labels(channel=channel, category=category)


class IntakeServicer(intake_grpc.IntakeServiceServicer):
    """Domain errors raised here become status codes in the server's one interceptor."""

    def __init__(
        self,
        *,
        uow_factory: Callable[[], AbstractContextManager[IntakeUnitOfWork]],
        deps: IntakeDeps,
        after_commit: Callable[[], None] = lambda: None,
        classify: ScoredCategoriser = lambda text: ("", 0.0),
        locate: CandidateLocator = lambda text, within: ("", False, []),
        region_message: Callable[[str], common_pb2.Region] = lambda code: common_pb2.Region(code=code),
        case_mac: Mac | None = None,
        reads: Callable[[], AbstractContextManager[IntakeUnitOfWork]] | None = None,
    ) -> None:
        self._case_mac = case_mac  # signs the case passes TrackCase answers (the node's keyring)
        self._uow_factory = uow_factory
        # GetCase's unit of work: read-only, without an ORM session when the adapter has one.
        self._reads = reads or uow_factory
        self._deps = deps
        self._after_commit = after_commit
        self._classify = classify
        self._locate = locate
        self._region_message = region_message

    def _submit(self, request: intake_pb2.SubmitCaseRequest) -> handlers.SubmitResult:
        result = handlers.submit_case(
            mapping.submission(request),
            uow_factory=self._uow_factory,
            deps=self._deps,
            submitted_at=mapping.submitted_at(request),
        )
        if result.created:
            self._after_commit()
            case = result.case
            # channel and category are small fixed vocabularies: safe, bounded label values
            CASES_RECEIVED.labels(channel=case.channel, category=case.category or "unclassified").inc()
        return result

    def SubmitCase(self, request: intake_pb2.SubmitCaseRequest, context: Any) -> intake_pb2.SubmitCaseResponse:
        result = self._submit(request)
        return intake_pb2.SubmitCaseResponse(
            case=mapping.case_message(result.case, personal="full"),
            created=result.created,
            tracking_code=result.case.tracking_code,
        )

    def ImportCases(
        self, request_iterator: Iterator[intake_pb2.ImportCasesRequest], context: Any
    ) -> Iterator[intake_pb2.ImportCasesResponse]:
        # Every row gets its own answer; a bad row is reported and the stream goes on.
        for row in request_iterator:
            try:
                # The edge's contract rules, per row (RequestRulesInterceptor leaves rows to us).
                check_request(row.submission)
                result = self._submit(row.submission)
            except InvalidArgument as error:
                yield intake_pb2.ImportCasesResponse(
                    row_index=row.row_index, error_field=error.field, error_reason=error.reason
                )
                continue
            except DomainError as error:
                yield intake_pb2.ImportCasesResponse(row_index=row.row_index, error_reason=error.message)
                continue
            yield intake_pb2.ImportCasesResponse(
                row_index=row.row_index,
                case_id=result.case.case_id,
                created=result.created,
                tracking_code=result.case.tracking_code,
            )

    @read_only
    def GetCase(self, request: intake_pb2.GetCaseRequest, context: Any) -> intake_pb2.GetCaseResponse:
        if not request.case_id:
            raise InvalidArgument("case_id", "must be set")
        case, timeline = handlers.get_case(request.case_id, uow_factory=self._reads)
        # The citizen's own words (personal data in them unmasked) only for the 信访 office's roles.
        principal = current_principal()
        original = principal is not None and principal.kind == "operator" and principal.has_any(OFFICE)
        return intake_pb2.GetCaseResponse(
            case=mapping.case_message(case, original_text=original),
            timeline=[mapping.timeline_entry(e) for e in timeline],
        )

    @read_only
    def ListCases(self, request: intake_pb2.ListCasesRequest, context: Any) -> intake_pb2.ListCasesResponse:
        try:
            states = frozenset(mapping.state_name(value) for value in request.states)
        except ValueError:
            raise InvalidArgument("states", "unknown case state") from None
        filters = CaseFilter(
            states=states,
            channel=mapping.channel_name(request.channel) if request.channel else None,
            category=request.category or None,
            regions=handlers.check_region_filter(request.region_code, self._deps),
            submitted_after=from_timestamp(request.submitted_after, "submitted_after"),
            submitted_before=from_timestamp(request.submitted_before, "submitted_before"),
            case_ids=handlers.check_case_ids(request.case_ids),
        )
        page = handlers.list_cases(
            filters,
            page_token=request.page.page_token,
            size=handlers.page_size(request.page.page_size),
            uow_factory=self._uow_factory,
        )
        return intake_pb2.ListCasesResponse(
            cases=[mapping.case_message(case) for case in page.cases],
            page=common_pb2.PageResponse(next_page_token=page.next_page_token, total_size=page.total_size),
        )

    @read_only
    def ListPublishedReplies(
        self, request: intake_pb2.ListPublishedRepliesRequest, context: Any
    ) -> intake_pb2.ListPublishedRepliesResponse:
        after, before = handlers.month_range(request.month) if request.month else (None, None)
        filters = CaseFilter(
            states=handlers.PUBLISHED_STATES,
            category=request.category or None,
            regions=handlers.check_region_filter(request.region_code, self._deps),
            submitted_after=after,
            submitted_before=before,
            published_only=True,
            text=request.text.strip() or None,
        )
        page = handlers.list_cases(
            filters,
            page_token=request.page.page_token,
            size=handlers.page_size(request.page.page_size),
            uow_factory=self._uow_factory,
            # Not counted: with a category or words to find, counting read a growing share of the
            # published replies on every page (issue 17); the board pages on.
            count=False,
        )
        return intake_pb2.ListPublishedRepliesResponse(
            replies=[mapping.published_reply(case) for case in page.cases],
            page=common_pb2.PageResponse(next_page_token=page.next_page_token, total_size=page.total_size),
        )

    def TrackCase(self, request: intake_pb2.TrackCaseRequest, context: Any) -> intake_pb2.TrackCaseResponse:
        view = handlers.track_case(
            request.tracking_code, request.phone_last4, uow_factory=self._uow_factory, deps=self._deps
        )
        case = view.case
        return intake_pb2.TrackCaseResponse(
            tracking_code=case.tracking_code,
            title=case.title,
            state=mapping.state_value(case.state),  # type: ignore[arg-type]
            submitted_at=to_timestamp(case.submitted_at),
            timeline=[mapping.timeline_entry(entry) for entry in view.timeline],
            can_evaluate=view.can_evaluate,
            can_request_review=view.can_request_review,
            can_withdraw=view.can_withdraw,
            case_pass=issue_case_pass(self._case_mac, case.case_id) if self._case_mac is not None else "",
            satisfaction=mapping.satisfaction_value(case.satisfaction),  # type: ignore[arg-type]
            reply_text=case.reply_text,
            replied_at=to_timestamp(case.replied_at) if case.replied_at is not None else None,
            deadline=to_timestamp(case.handling_due) if case.handling_due is not None else None,
            merged_into_case_id=case.merged_into,
            progress_notices=OPT_OUT_FLAG not in case.flags,
            notices=[
                intake_pb2.ProgressNotice(
                    kind=n.kind,
                    channel=n.channel,
                    text=n.text,
                    state=n.state,
                    created_at=to_timestamp(n.created_at),
                    sent_at=to_timestamp(n.sent_at) if n.sent_at is not None else None,
                )
                for n in view.messages
            ],
        )

    def SetProgressNotices(
        self, request: intake_pb2.SetProgressNoticesRequest, context: Any
    ) -> intake_pb2.SetProgressNoticesResponse:
        case = handlers.set_progress_notices(
            request.tracking_code,
            request.phone_last4,
            enabled=request.enabled,
            uow_factory=self._uow_factory,
            deps=self._deps,
        )
        self._after_commit()  # the choice is an event stats counts, up the tiers too
        return intake_pb2.SetProgressNoticesResponse(progress_notices=OPT_OUT_FLAG not in case.flags)

    def EvaluateCase(self, request: intake_pb2.EvaluateCaseRequest, context: Any) -> intake_pb2.EvaluateCaseResponse:
        evaluated = handlers.evaluate_case(
            request.tracking_code,
            request.phone_last4,
            satisfaction=mapping.satisfaction_name(request.satisfaction),
            comment=request.comment,
            uow_factory=self._uow_factory,
            deps=self._deps,
        )
        self._after_commit()
        return intake_pb2.EvaluateCaseResponse(
            evaluation_id=evaluated.evaluation_id, forwarded_to_owner=bool(evaluated.forwarded_to)
        )

    def RequestReview(self, request: intake_pb2.RequestReviewRequest, context: Any) -> intake_pb2.RequestReviewResponse:
        recorded = handlers.request_review(
            request.tracking_code,
            request.phone_last4,
            reason=request.reason,
            uow_factory=self._uow_factory,
            deps=self._deps,
        )
        self._after_commit()
        return intake_pb2.RequestReviewResponse(
            decide_by=to_timestamp(recorded.decide_by), forwarded_to_owner=bool(recorded.forwarded_to)
        )

    def WithdrawCase(self, request: intake_pb2.WithdrawCaseRequest, context: Any) -> intake_pb2.WithdrawCaseResponse:
        withdrawn = handlers.withdraw_case(
            request.tracking_code,
            request.phone_last4,
            reason=request.reason,
            uow_factory=self._uow_factory,
            deps=self._deps,
        )
        self._after_commit()
        return intake_pb2.WithdrawCaseResponse(
            state=mapping.state_value(withdrawn.case.state),  # type: ignore[arg-type]
            forwarded_to_owner=bool(withdrawn.forwarded_to),
        )

    @read_only
    def ListModerationQueue(
        self, request: intake_pb2.ListModerationQueueRequest, context: Any
    ) -> intake_pb2.ListModerationQueueResponse:
        page = handlers.moderation_queue(
            regions=handlers.check_region_filter(request.region_code, self._deps),
            page_token=request.page.page_token,
            size=handlers.page_size(request.page.page_size),
            uow_factory=self._uow_factory,
        )
        return intake_pb2.ListModerationQueueResponse(
            items=[
                intake_pb2.ModeratedCase(
                    case=mapping.case_message(case),
                    reasons=list(case.moderation_reasons),
                    held_at=to_timestamp(case.updated_at),
                )
                for case in page.cases
            ],
            page=common_pb2.PageResponse(next_page_token=page.next_page_token, total_size=page.total_size),
        )

    def ReleaseModeratedCase(
        self, request: intake_pb2.ReleaseModeratedCaseRequest, context: Any
    ) -> intake_pb2.ReleaseModeratedCaseResponse:
        if request.decision not in (intake_pb2.MODERATION_DECISION_RELEASE, intake_pb2.MODERATION_DECISION_REJECT):
            raise InvalidArgument("decision", "must be RELEASE or REJECT")
        case = handlers.decide_moderation(
            request.case_id,
            release=request.decision == intake_pb2.MODERATION_DECISION_RELEASE,
            note=request.note,
            actor=request.actor,
            expected_version=request.expected_version,
            uow_factory=self._uow_factory,
            deps=self._deps,
        )
        self._after_commit()
        return intake_pb2.ReleaseModeratedCaseResponse(case=mapping.case_message(case))

    def ClassifyText(self, request: intake_pb2.ClassifyTextRequest, context: Any) -> intake_pb2.ClassifyTextResponse:
        if not request.text.strip():
            raise InvalidArgument("text", "must not be empty")
        category, confidence = self._classify(request.text)
        return intake_pb2.ClassifyTextResponse(category=category, confidence=confidence)

    def LocateText(self, request: intake_pb2.LocateTextRequest, context: Any) -> intake_pb2.LocateTextResponse:
        if not request.text.strip():
            raise InvalidArgument("text", "must not be empty")
        # Empty means the whole tree (the locate callable picks the root).
        code, ambiguous, candidates = self._locate(request.text, request.within_region_code)
        return intake_pb2.LocateTextResponse(
            region_code=code, ambiguous=ambiguous, candidates=[self._region_message(c) for c in candidates]
        )
