"""The names of a node's services, importable with no dependency (``lianxin --help`` needs them)."""

from __future__ import annotations

# The five business services (DESIGN §2): each has a database, migrations, an api and a worker.
SERVICES: tuple[str, ...] = ("intake", "routing", "exchange", "video", "stats")
