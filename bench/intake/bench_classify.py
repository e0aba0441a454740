"""Category model latency: one message at a time, as intake classifies a submission, and in batches.

    .venv/bin/python -m bench.intake.bench_classify --model var/models/category.joblib
    .venv/bin/python -m bench.intake.bench_classify --messages 200        # fewer messages
    .venv/bin/python -m bench.intake.bench_classify --cli                 # also time `lianxin classify`

The texts are the first ``--messages`` rows of messages.csv (title + body, as a submission gives
them). Each text is classified once before timing, so jieba's dictionary is loaded and the timed
calls are what a running node pays; the word cache is then cleared so that no timed call finds its
text already segmented. Reports p50, p99 and mean per message (``predict_submission``), in wall
time and in CPU time of the calling thread (on a shared machine the wall time includes waiting
for a core; the CPU time is what the call costs), the batch
rate, and with ``--cli`` the wall time of ``lianxin classify`` reading every text on stdin
(including the process start and the model load) divided by the number of messages.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from services.intake import classifier
from services.intake.classifier import Classifier, load_current, model_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("LIANXIN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=shared / "messages.csv", help="messages.csv")
    parser.add_argument("--model", type=Path, default=Path("var/models/category.joblib"), help="trained model")
    parser.add_argument("--messages", type=int, default=1000, help="how many messages to time")
    parser.add_argument("--cli", action="store_true", help="also time `lianxin classify` on all of them")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} does not exist (messages.csv is not shipped with the repository)")
    model = load_current(args.model)
    if model is None:
        parser.error(f"no current model at {args.model}: python -m bench.intake.train_classifier --out {args.model}")

    with args.data.open(encoding="utf-8", newline="") as handle:
        rows = [(r["title"], r["body"]) for r in csv.DictReader(handle)][: args.messages]
    model.predict_submission(*rows[0])  # jieba's dictionary, the first call's imports
    classifier._words.cache_clear()
    timings, cpu = _one_at_a_time(model, rows)
    classifier._words.cache_clear()
    started = time.perf_counter()
    model.predict([model_text(title, body) for title, body in rows])
    batch = (time.perf_counter() - started) / len(rows) * 1000
    mean_chars = statistics.fmean(len(t) + len(b) for t, b in rows)
    print(f"{len(rows)} messages of messages.csv, {mean_chars:.0f} characters on average")
    print(
        f"one at a time: p50 {_quantile(timings, 0.5):.2f} ms  p99 {_quantile(timings, 0.99):.2f} ms  "
        f"mean {statistics.fmean(timings):.2f} ms per message"
    )
    print(
        f"one at a time, CPU (calling thread): p50 {_quantile(cpu, 0.5):.2f} ms  p99 {_quantile(cpu, 0.99):.2f} ms  "
        f"mean {statistics.fmean(cpu):.2f} ms per message"
    )
    print(f"in one batch: {batch:.2f} ms per message")
    if args.cli:
        lines = "".join(f"{title}\\n{body}".replace("\n", " ") + "\n" for title, body in rows)
        started = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).with_name("lianxin")), "classify", "--model", str(args.model)],
            input=lines.encode(),
            stdout=subprocess.DEVNULL,
            check=True,
        )
        elapsed = time.perf_counter() - started
        print(f"lianxin classify, {len(rows)} lines: {elapsed:.2f} s, {elapsed / len(rows) * 1000:.2f} ms per message")
    return 0


def _one_at_a_time(model: Classifier, rows: list[tuple[str, str]]) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of each call (on a shared machine the CPU time is what the call costs)."""
    wall: list[float] = []
    cpu: list[float] = []
    for title, body in rows:
        started, started_cpu = time.perf_counter(), time.thread_time()
        model.predict_submission(title, body)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    return wall, cpu


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    raise SystemExit(main())
