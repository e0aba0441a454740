"""What a node's first cases cost beside its later ones: every node of a YAML tree in one host in
this process (as ``bench.scale`` hosts them), then rounds of one case per county, each round waited
on until the tree's up-logs are drained; per round the process's CPU and the statements SQLAlchemy
compiled. A first round far above the others is start-up work paid by the first cases (issue 21:
each node compiled its statements again, ~50 ms a node, before they were shared per process).

    .venv/bin/python -m bench.first_cases --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from typing import Any

import grpc
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from sqlalchemy.sql import compiler

from bench.case_profile import _up_lag
from bench.catchup_profile import in_process_settings
from bench.harness.workload import Submissions
from bench.idle_profile import start_topology
from services.common.regions import RegionTree, Tier


class Compilations:
    """Statements SQLAlchemy compiles while counting (SQLCompiler's constructor does the compiling)."""

    def __init__(self) -> None:
        self.count = 0
        original = compiler.SQLCompiler.__init__

        def counting(compiled: compiler.SQLCompiler, *args: Any, **kwargs: Any) -> None:
            original(compiled, *args, **kwargs)
            self.count += 1

        compiler.SQLCompiler.__init__ = counting  # type: ignore[method-assign,assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="bench/scale/leshan.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    compilations = Compilations()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as data, contextlib.ExitStack() as running:
        nodes = start_topology(in_process_settings(data, None), options.topology, running)
        regions = RegionTree.load()
        counties = [n for n in nodes if regions.get(n.code).tier is Tier.COUNTY]
        linked = [n for n in nodes if n.settings.parent]
        time.sleep(3.0)  # start-up's own work settles first
        stubs = [
            (n.code, intake_grpc.IntakeServiceStub(running.enter_context(grpc.insecure_channel(n.address))))
            for n in counties
        ]
        submissions = {code: Submissions(code) for code, _ in stubs}
        print(f"{len(nodes)} nodes ({len(counties)} counties) in this process")
        for round_ in range(options.rounds):
            compilations.count = 0
            cpu = time.process_time()
            for code, stub in stubs:
                stub.SubmitCase(submissions[code].request(0, round_), timeout=30)
            deadline = time.monotonic() + 60
            while any(_up_lag(n.address) for n in linked):
                if time.monotonic() > deadline:
                    raise TimeoutError("the tree's up-logs did not drain within 60 s")
                time.sleep(0.01)  # polling the links' lag with a deadline
            time.sleep(1.0)  # the province's consumers finish the round
            spent = time.process_time() - cpu
            print(
                f"round {round_}: {len(stubs)} cases, CPU {spent * 1000:.0f} ms"
                f" ({spent * 1000 / len(stubs):.0f} ms a case, the second of waiting included),"
                f" {compilations.count} statements compiled"
            )


if __name__ == "__main__":
    main()
