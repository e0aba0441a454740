"""Moved to tests/support/helpers.py; this name stays until the branches in flight have rebased."""

from tests.support.helpers import free_port_block, running_federation, stop_process, wait_until

__all__ = ["free_port_block", "running_federation", "stop_process", "wait_until"]
