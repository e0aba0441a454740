"""Real linked nodes for the exchange tests: each runs all five services on its own port and database.

``linked_nodes`` starts nodes on SQLite files or, for the PostgreSQL run, each node on a database of
its own (created here and dropped at the end); children dial their parent over real gRPC.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.service import NodeHooks, utc_now
from services.common.settings import Settings
from services.node import Node

Start = Callable[..., Node]
# The nodes these tests start: 四川省, 乐山市, 市中区.
TIERS = ("510000", "511100", "511102")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def linked_nodes(backend: str, tmp_path: Path, admin_url: Callable[[], str]) -> Iterator[Start]:
    """Starts nodes on SQLite or, for ``backend`` "postgres", each node on its own PostgreSQL database.

    ``admin_url`` is asked only for PostgreSQL (the fixture that skips the test without it).
    """
    started: list[Node] = []
    databases: dict[str, str] = {}  # node -> URL: a restarted node finds its data again
    admin: sa.Engine | None = None
    run = uuid.uuid4().hex[:10]

    def execute(sql: str) -> None:
        assert admin is not None
        with admin.connect() as conn:
            conn.execute(sa.text(sql))

    def name_of(code: str) -> str:
        return f"lianxin_x_{run}_{code}"

    if backend == "postgres":
        admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
        # CREATE/DROP DATABASE take about a second each but overlap well: the three tiers in parallel.
        with ThreadPoolExecutor(len(TIERS)) as pool:
            list(pool.map(execute, [f'CREATE DATABASE "{name_of(code)}"' for code in TIERS]))
        databases.update({code: admin.url.set(database=name_of(code)).render_as_string(False) for code in TIERS})

    def database_for(code: str) -> str | None:
        if admin is None:
            return None
        if code not in databases:
            execute(f'CREATE DATABASE "{name_of(code)}"')
            databases[code] = admin.url.set(database=name_of(code)).render_as_string(False)
        return databases[code]

    def _start(
        code: str,
        parent: Node | None = None,
        *,
        port: int = 0,
        parent_address: str = "",
        national: str = "",
        clock: Callable[[], datetime] = utc_now,
        hooks: NodeHooks | None = None,
        **settings: Any,
    ) -> Node:
        """``clock`` fixes the node's today; ``hooks`` reach the services (adapters such as
        ``intake_notice_channel``); ``settings`` override Settings fields (sweep_interval_s, ...)."""
        node = Node(
            Settings(
                node=code,
                data_dir=tmp_path,
                database_url=database_for(code),
                parent=parent.address if parent is not None else (parent_address or None),
                national=national or None,
                grpc_port=port,
                log_json=False,
                **{"relay_interval_s": 0.05, **settings},
            ),
            clock=clock,
            hooks=replace(hooks) if hooks is not None else NodeHooks(),
        ).start()
        started.append(node)
        return node

    try:
        yield _start
    finally:
        for node in reversed(started):
            if node.server is not None:
                node.stop(grace=0.5)
        if admin is not None:
            with ThreadPoolExecutor(len(databases)) as pool:
                list(
                    pool.map(execute, [f'DROP DATABASE IF EXISTS "{name_of(code)}" WITH (FORCE)' for code in databases])
                )
            admin.dispose()


@contextmanager
def three_tiers(
    backend: str, tmp_path: Path, admin_url: Callable[[], str], *, county_clock: Callable[[], datetime] = utc_now
) -> Iterator[tuple[Node, Node, Node]]:
    """Province 510000 ← city 511100 ← county 511102, linked and started parents first."""
    with linked_nodes(backend, tmp_path, admin_url) as start:
        province = start("510000")
        city = start("511100", province)
        yield province, city, start("511102", city, clock=county_clock)


def phone_for(ref: str) -> str:
    """One citizen per request: intake limits how often one submitter may write."""
    return f"139{int.from_bytes(ref.encode()[-6:].rjust(6, b'0'), 'big') % 100_000_000:08d}"


def submit(node: Node, ref: str, region: str = "511102") -> str:
    with grpc.insecure_channel(node.address) as channel:
        reply = intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_HOTLINE,
                channel_ref=ref,
                title="小区门口夜间施工噪音扰民",
                body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
                category="环境保护",
                region_code=region,
                hotline_operator_id="op-007",
                complainant=common_pb2.Person(name="张三", phone=phone_for(ref)),
            ),
            timeout=5,
        )
    case_id: str = reply.case.case_id
    return case_id


def replicas(node: Node, subtree: str = "", case_id: str = "") -> exchange_pb2.ListReplicasResponse:
    with grpc.insecure_channel(node.address) as channel:
        reply: exchange_pb2.ListReplicasResponse = exchange_grpc.ExchangeServiceStub(channel).ListReplicas(
            exchange_pb2.ListReplicasRequest(subtree_node=subtree, case_id=case_id, max_items=10_000), timeout=5
        )
    return reply


def exchange(node: Node) -> exchange_grpc.ExchangeServiceStub:
    return exchange_grpc.ExchangeServiceStub(grpc.insecure_channel(node.address))
