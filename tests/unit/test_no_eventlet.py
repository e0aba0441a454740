"""Guard: the api side never imports eventlet (a patched grpcio server hangs, DESIGN §4)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

# Everything an api process or the embedded node loads; modules not written yet are skipped.
API_SIDE_MODULES = [
    "services.common.outbox",
    "services.common.bus",
    "services.common.db",
    "services.common.service",
    "services.common.grpcserver",
    "services.common.telemetry",
    "services.node",
    "services.cli",
]


def test_api_side_modules_do_not_import_eventlet_or_nameko() -> None:
    # A fresh interpreter: this session's plugins (nameko's pytest plugin) must not mask an import.
    present = [name for name in API_SIDE_MODULES if importlib.util.find_spec(name) is not None]
    code = (
        "import importlib, sys\n"
        f"for name in {present!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in ('eventlet', 'nameko') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"imported by the api side: {result.stdout.strip()}"


def test_this_session_is_not_eventlet_patched() -> None:
    if "eventlet" not in sys.modules:
        return
    from eventlet import patcher

    assert not any(patcher.is_monkey_patched(m) for m in ("socket", "thread", "select", "time"))
