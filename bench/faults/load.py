"""The load generator: SubmitCase at a steady rate, one idempotency key per case, retried until acked.

A ticker thread issues a new key every ``1/rate`` seconds; a few sender threads submit them. A
submission that fails with UNAVAILABLE or DEADLINE_EXCEEDED (the server is down, restarting, or
did not answer in time — the case may or may not be stored) is retried with the same key, as a
careful client does; intake is idempotent on ``(channel, channel_ref)``, so a retry of a stored
case returns that case. Every acknowledged key is recorded with its case id and the time of the
ack; any other status is recorded as a failure and not retried.

The client's reconnect backoff is capped at one second so the recovery figures measure the
server, not grpcio's backoff (which grows to two minutes by default).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass
class Submission:
    key: str
    issued_at: float  # monotonic
    attempts: int = 0
    acked_at: float | None = None
    case_id: str | None = None
    created: bool | None = None
    failure: str | None = None  # a non-retryable status, or "gave up"


def case_request(node: str, key: str, number: int) -> intake_pb2.SubmitCaseRequest:
    """An anonymous web case (no per-citizen rate limit) with its own text (no duplicate flag)."""
    return intake_pb2.SubmitCaseRequest(
        channel=common_pb2.CHANNEL_WEB,
        channel_ref=key,
        title=f"故障演练 第{number}号 路灯不亮",
        body=f"乐山市市中区某路段路灯不亮，夜间出行不便。编号 {key}",
        category="城乡建设",
        region_code=node,
        anonymous=True,
    )


@dataclass
class LoadGenerator:
    """Submits cases to the intake api at ``address`` until ``stop()``; keys are ``<prefix>-<n>``."""

    address: str
    node: str
    prefix: str
    rate: float
    senders: int = 4
    call_timeout_s: float = 5.0
    give_up_s: float = 180.0
    submissions: list[Submission] = field(default_factory=list)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    on_ack: Callable[[Submission], None] | None = None

    def __post_init__(self) -> None:
        self._queue: queue.Queue[Submission | None] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = intake_grpc.IntakeServiceStub(self._channel)

    # ------------------------------------------------------------------ control

    def start(self) -> LoadGenerator:
        self._threads = [threading.Thread(target=self._tick, name="load-ticker", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_loop, name=f"load-sender-{i}", daemon=True) for i in range(self.senders)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, drain_timeout_s: float = 120.0) -> None:
        """Stop issuing keys; let the keys already issued finish (acked, failed or given up)."""
        self._stopping.set()
        self._threads[0].join()
        for _ in range(self.senders):
            self._queue.put(None)
        deadline = time.monotonic() + drain_timeout_s
        for thread in self._threads[1:]:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._channel.close()

    # ------------------------------------------------------------------ figures

    @property
    def acked(self) -> dict[str, str]:
        """key → case id of every acknowledged submission."""
        with self._lock:
            return {s.key: s.case_id for s in self.submissions if s.case_id is not None}

    def ack_times(self) -> list[float]:
        with self._lock:
            return sorted(s.acked_at for s in self.submissions if s.acked_at is not None)

    def failures(self) -> list[Submission]:
        with self._lock:
            return [s for s in self.submissions if s.failure is not None]

    def pending(self) -> int:
        with self._lock:
            return sum(1 for s in self.submissions if s.case_id is None and s.failure is None)

    def first_ack_after(self, moment: float) -> float | None:
        """Monotonic time of the first ack of a submission that was (re)tried after ``moment``."""
        return next((t for t in self.ack_times() if t >= moment), None)

    # ------------------------------------------------------------------ threads

    def _tick(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        number = 0
        while not self._stopping.is_set():
            number += 1
            submission = Submission(key=f"{self.prefix}-{number:06d}", issued_at=time.monotonic())
            with self._lock:
                self.submissions.append(submission)
            self._queue.put(submission)
            next_at += interval
            # A steady rate: the next key is due at a fixed time, whatever the last call took.
            self._stopping.wait(max(0.0, next_at - time.monotonic()))

    def _send_loop(self) -> None:
        while True:
            submission = self._queue.get()
            if submission is None:
                return
            self._submit(submission)

    def _submit(self, submission: Submission) -> None:
        number = int(submission.key.rsplit("-", 1)[1])
        request = case_request(self.node, submission.key, number)
        pause = 0.05
        while True:
            submission.attempts += 1
            try:
                reply = self._stub.SubmitCase(request, timeout=self.call_timeout_s)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                with self._lock:
                    self.codes[code.name] += 1
                if code not in RETRYABLE:
                    submission.failure = f"{code.name}: {error.details() if isinstance(error, grpc.Call) else ''}"
                    return
                if time.monotonic() - submission.issued_at > self.give_up_s:
                    submission.failure = f"gave up after {submission.attempts} attempts ({code.name})"
                    return
                time.sleep(pause)  # retry pacing (backoff), not ordering
                pause = min(pause * 2, 0.5)
                continue
            with self._lock:
                self.codes["OK"] += 1
                submission.case_id = str(reply.case.case_id)
                submission.created = bool(reply.created)
                submission.acked_at = time.monotonic()
            if self.on_ack is not None:
                self.on_ack(submission)
            return
