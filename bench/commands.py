"""Operator commands of the load and fault harness: `lianxin bench`, `lianxin faults` and `lianxin simulate`.

Each part registers its own parser; a part whose module is not there yet is skipped so the CLI
never breaks because of the harness."""

from __future__ import annotations

import importlib
from typing import Any


def register(sub: Any) -> None:
    for module_name in ("bench.harness.cli", "bench.faults.cli", "bench.simulate.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not module_name.startswith(error.name):
                raise
            continue
        module.register(sub)


__all__ = ["register"]
