"""Operator commands of intake: ``lianxin classify`` and ``lianxin locate`` (one text per stdin line)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _lines() -> list[str]:
    # A line is one text; literal "\n" inside a line stands for a line break (title\nbody).
    return [line.rstrip("\r\n").replace("\\n", "\n") for line in sys.stdin]


def cmd_classify(args: argparse.Namespace) -> int:
    from services.common.settings import Settings
    from services.intake.category_model import load_or_train
    from services.intake.classifier import Classifier

    if args.model is not None:
        model = Classifier.load(Path(args.model))
    else:
        settings = Settings()
        data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir
        model = load_or_train(data_dir, Path(args.shared_data) if args.shared_data else settings.intake.shared_data)
    if model is None:
        print("no category model and no messages.csv to train one (set LIANXIN_SHARED_DATA)", file=sys.stderr)
        return 2
    texts = _lines()
    for category, confidence in model.predict(texts) if texts else []:
        print(f"{category}\t{confidence:.3f}" if args.confidence else category)
    return 0


def cmd_locate(args: argparse.Namespace) -> int:
    from services.common.regions import RegionTree
    from services.intake.locator import Locator

    tree = RegionTree.load(Path(args.regions) if args.regions else None)
    if args.node not in tree:
        print(f"unknown region code {args.node}", file=sys.stderr)
        return 2
    locator = Locator(tree)
    for text in _lines():
        print(locator.locate(text, node=args.node).code or "")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    classify = subparsers.add_parser(
        "classify", help="print one category per stdin line (the intake model; trained on first use)"
    )
    classify.add_argument("--model", help="model file (default: <data_dir>/models/category.joblib)")
    classify.add_argument("--data-dir", help="data dir (default: LIANXIN_DATA_DIR or var)")
    classify.add_argument("--shared-data", help="folder with messages.csv (default: LIANXIN_SHARED_DATA)")
    classify.add_argument("--confidence", action="store_true", help="also print the confidence, tab-separated")
    classify.set_defaults(func=cmd_classify)

    locate = subparsers.add_parser(
        "locate", help="print one region code (or an empty line) per stdin line, within NODE's subtree"
    )
    locate.add_argument("--node", required=True, help="6-digit region code of the node")
    locate.add_argument("--regions", help="region CSV (default: the bundled Sichuan list)")
    locate.set_defaults(func=cmd_locate)
