"""Reproducible training of the category model from messages.csv.

    python -m bench.intake.train_classifier --data ../shared/data/messages.csv \
        --out var/models/category.joblib [--seed 42] [--cross-validate] [--variant taxonomy]

Prints the hold-out's accuracy, macro-F1 and per-class F1 (and with ``--cross-validate`` the
5-fold figures of the development rows, mean ± standard deviation), then writes the model (refit
on all labelled rows, with the unlabelled ones) and ``category.metrics.json`` beside it. The same
data and seed give the same model. Neither file may enter the repository: both derive from
messages.csv, which has no licence for redistribution (var/ is git-ignored).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from services.intake.classifier import DEFAULT_SEED, DEFAULT_VARIANT, FOLDS, VARIANTS, metrics_path, train_to_file


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the intake category model.")
    parser.add_argument("--data", type=Path, required=True, help="path to messages.csv")
    parser.add_argument("--out", type=Path, default=Path("var/models/category.joblib"), help="model file")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training and fold seed")
    parser.add_argument(
        "--cross-validate", action="store_true", help=f"also {FOLDS}-fold cross-validate the development rows"
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default=DEFAULT_VARIANT,
        help="model (chars, views, ensemble: alternatives measured)",
    )
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} does not exist (messages.csv is not shipped with the repository)")

    report = train_to_file(args.data, args.out, seed=args.seed, evaluate=args.cross_validate, variant=args.variant)
    print(
        f"model {report.variant}, labelled rows {report.rows}, unlabelled rows {report.unlabelled_rows}, "
        f"seed {report.seed}, taxonomy terms {report.taxonomy_terms}"
    )
    if report.cv_accuracy:
        print(
            f"{FOLDS}-fold cross-validation of {report.rows - report.held_out_rows} development rows: "
            f"accuracy {_spread(report.cv_accuracy)}  macro-F1 {_spread(report.cv_macro_f1)}"
        )
        print(f"  folds: accuracy {report.cv_accuracy}  macro-F1 {report.cv_macro_f1}")
    print(f"hold-out ({report.held_out_rows} rows): accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}")
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
