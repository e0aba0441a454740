"""`lianxin migrate` declares a service's event queues, so events published before its worker's
first start are kept for it (RabbitMQ drops an event that finds no queue).

Runs on a private RabbitMQ node (bench/faults/infra.py) so the shared broker gets no stray queues.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.connection import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.standalone.events import event_dispatcher

from bench.faults.infra import CapabilityMissing, PrivateRabbitMQ
from tests.support.services import unavailable

pytestmark = pytest.mark.slow

# nameko's name for a service-pool handler queue: evt-<source>-<type>--<service>.<method>
STATS_QUEUE = "evt-intake-case_registered--stats.on_intake__case_registered"


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateRabbitMQ]:
    try:
        PrivateRabbitMQ._find_binaries()
    except CapabilityMissing as missing:
        unavailable(missing.what, missing.why)
    rabbit = PrivateRabbitMQ()  # its own temp dir: the rabbitmq user cannot enter pytest's
    try:
        rabbit.start()
    except CapabilityMissing as missing:
        unavailable(missing.what, missing.why)
    try:
        yield rabbit
    finally:
        rabbit.close()


def _queue_depth(uri: str, name: str) -> int | None:
    """Messages waiting in queue ``name``; None when it does not exist (a passive declare fails)."""
    with Connection(uri) as connection:  # type: ignore[no-untyped-call]
        try:
            _, count, _ = connection.channel().queue_declare(name, passive=True)
        except Exception as error:
            if "NOT_FOUND" in str(error) or "404" in str(error):
                return None
            raise
        return int(count)


def test_migrate_declares_the_queues_so_events_before_the_first_worker_start_are_kept(
    broker: PrivateRabbitMQ, tmp_path: Path
) -> None:
    uri = broker.amqp_uri
    assert _queue_depth(uri, STATS_QUEUE) is None  # a fresh broker: no consumer ever declared it

    env = {**os.environ, "LIANXIN_NODE": "511102", "LIANXIN_DATA_DIR": str(tmp_path), "LIANXIN_AMQP_URI": uri}
    env.pop("LIANXIN_DATABASE_URL", None)  # SQLite under the data dir
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate", "--service", "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "stats: migrated" in done.stdout and "event queues declared" in done.stdout

    # intake's relay publishes before the stats worker ever ran: the event waits in the queue.
    dispatch = event_dispatcher({AMQP_URI_CONFIG_KEY: uri})
    dispatch("intake", "case_registered", {"event_id": "e-before-any-worker"})
    assert _queue_depth(uri, STATS_QUEUE) == 1

    # Declaring again (the next deployment's migrate) agrees with what exists and keeps the message.
    again = subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate", "--service", "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stderr
    assert _queue_depth(uri, STATS_QUEUE) == 1
