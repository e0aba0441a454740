"""``lianxin serve --service intake[,routing,...]``: the production api process of one or more services.

gRPC only (never eventlet): the servicers of the services named, on their own databases, behind the
same token interceptor, mTLS credentials and audit trail as an embedded node. One service per process
is the Kubernetes shape (each its own Deployment); several in one process is what lets a gateway ask
their reads together (``ReadsService/ReadTogether``: the console's case page reads intake, routing and
video in one call, issue 17) beside the node's own process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.common.names import SERVICES
from services.common.settings import Settings


def service_list(value: str) -> list[str]:
    """``--service``'s value: one service or several, comma-separated, each a known one."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVICES]
    if not names or unknown or len(set(names)) != len(names):
        known = ", ".join(SERVICES)
        raise ValueError(f"--service: expected one or more of {known}, comma-separated and each once: {value!r}")
    return names


def run_api(services: Sequence[str], configure: Callable[[Settings, str], None], wait: Callable[[], None]) -> int:
    """Serve ``services`` until ``wait`` returns (a signal), then drain for up to 5 s."""
    from services.common.crypto import require_configured_keys
    from services.common.grpcserver import GrpcServer
    from services.common.regions import RegionTree
    from services.common.security import server_security
    from services.node import build_service, database_ready

    settings = Settings()
    name = "-".join(services)
    configure(settings, f"lianxin-{name}-api")
    require_configured_keys("lianxin serve", settings.keys)  # never a generated or constant key in production
    regions = RegionTree.load(settings.regions_file)
    built = [build_service(settings, service, regions=regions) for service in services]
    servicers = [binding for parts, _ in built for binding in parts.servicers]
    checks = [database_ready(engine) for _, engine in built]
    security = server_security(settings, regions, [binding.full_name for binding in servicers])
    server = GrpcServer(
        servicers,
        settings=settings,
        ready=lambda: all(check() for check in checks),
        interceptors=security.interceptors,
        server_credentials=security.credentials,
    )
    server.start()
    print(f"{name}-api of node {settings.node} serving on {server.address}", flush=True)
    wait()
    server.stop(5.0)
    security.close()
    return 0
