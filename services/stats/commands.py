"""Operator commands of the stats service: ``lianxin report`` writes the monthly bulletin to files."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    """Write bulletin.md with its CSV and PNG files for one region and statistical month."""
    from services.common.db import make_engine, make_session_factory, service_database_url
    from services.common.errors import NotFound
    from services.common.migrations import upgrade
    from services.common.regions import RegionTree
    from services.common.service import utc_now
    from services.common.settings import Settings
    from services.stats.app import stats_config
    from services.stats.bulletin import write_bulletin
    from services.stats.domain import parse_month
    from services.stats.store import SqlWarehouse

    parse_month(args.month)  # a bad month is refused before any database is touched
    settings = Settings()
    if args.database_url:
        settings = settings.with_overrides(database_url=args.database_url)
    node = args.node or settings.node
    if args.node:
        settings = settings.with_overrides(node=node)
    regions = RegionTree.load(settings.regions_file)
    if args.region not in regions:
        raise NotFound("region", args.region)
    if not regions.contains(node, args.region):
        # A report for a region outside the node's subtree would be empty; use the region as the node.
        node = args.region
    engine = make_engine(service_database_url(settings, "stats"), service="stats")
    upgrade(engine, "stats")
    out = Path(args.out or f"bulletin-{args.region}-{args.month}")
    try:
        with make_session_factory(engine)() as session:
            bulletin = write_bulletin(
                SqlWarehouse(session),
                regions,
                node,
                region_code=args.region,
                month=args.month,
                out_dir=out,
                config=stats_config(settings.stats),
                as_of=utc_now(),
                min_cases=args.min_cases,
            )
    finally:
        engine.dispose()
    print(f"wrote {bulletin.markdown}")
    for path in bulletin.files:
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = subparsers.add_parser("report", help="write the monthly bulletin (Markdown, CSV, PNG) of a region")
    report.add_argument("--region", required=True, help="region code, e.g. 511100")
    report.add_argument("--month", required=True, help="statistical month YYYY-MM")
    report.add_argument("--out", help="output directory (default bulletin-REGION-MONTH)")
    report.add_argument("--database-url", help="stats warehouse URL (default: this node's, from LIANXIN_*)")
    report.add_argument("--node", help="node whose warehouse to read (default LIANXIN_NODE)")
    report.add_argument("--min-cases", type=int, default=10, help="minimum cases to be ranked")
    report.set_defaults(func=cmd_report)
