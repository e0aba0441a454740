"""Scenario names (import-light: the ``lianxin`` parser lists them in ``--help``)."""

from __future__ import annotations

from services.common.names import SERVICES

PRODUCTION_SCENARIOS: tuple[str, ...] = (
    *(f"kill-{service}-api" for service in SERVICES),
    *(f"kill-{service}-worker" for service in SERVICES),
    "rabbitmq-restart",
    "postgres-restart",
)
FEDERATION_SCENARIOS: tuple[str, ...] = ("link-cut", "link-delay")
SCENARIOS: tuple[str, ...] = PRODUCTION_SCENARIOS + FEDERATION_SCENARIOS
