"""Moved to tests/support/exchange_nodes.py; this name stays until the branches in flight have rebased."""

from tests.support.exchange_nodes import (
    TIERS,
    Start,
    exchange,
    free_port,
    linked_nodes,
    phone_for,
    replicas,
    submit,
    three_tiers,
)

__all__ = ["TIERS", "Start", "exchange", "free_port", "linked_nodes", "phone_for", "replicas", "submit", "three_tiers"]
