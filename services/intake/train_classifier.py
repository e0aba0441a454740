"""Reproducible training of the category model from messages.csv.

    python -m services.intake.train_classifier --data ../shared/data/messages.csv \
        --out var/models/category.joblib [--seed 42]

Prints held-out accuracy, macro-F1 and per-class F1, then writes the model (refit on all labelled
rows) and ``category.metrics.json`` beside it. Neither file may enter the repository: both derive
from messages.csv, which has no licence for redistribution (var/ is git-ignored).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from services.intake.classifier import DEFAULT_SEED, metrics_path, train_to_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the intake category model.")
    parser.add_argument("--data", type=Path, required=True, help="path to messages.csv")
    parser.add_argument("--out", type=Path, default=Path("var/models/category.joblib"), help="model file")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split and training seed")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} does not exist (messages.csv is not shipped with the repository)")

    report = train_to_file(args.data, args.out, seed=args.seed)
    print(f"labelled rows {report.rows}, held out {report.held_out_rows} (stratified, seed {report.seed})")
    print(f"held-out accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}")
    for category, f1 in report.per_class_f1.items():
        print(f"  F1 {f1:.4f}  {category}")
    print(
        f"threshold {report.threshold:.4f}: {report.held_out_below_threshold:.1%} of held-out rows "
        f"become 其他, accuracy on the rest {report.accuracy_above_threshold:.4f}"
    )
    print(f"trained in {report.train_seconds:.1f} s; wrote {args.out} and {metrics_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
