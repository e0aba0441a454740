"""Loading a node's TLS material publishes when its certificate and CA expire (the expiry alerts use it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import REGISTRY

from services.common.tls import NodeTls, write_dev_pki


def test_loading_node_certificates_exports_their_expiry(tmp_path: Path) -> None:
    write_dev_pki(tmp_path, ["511102"])
    NodeTls.load(tmp_path, "511102")
    node_expiry = REGISTRY.get_sample_value(
        "lianxin_tls_certificate_expiry_timestamp_seconds", {"region": "511102", "kind": "node"}
    )
    ca_expiry = REGISTRY.get_sample_value(
        "lianxin_tls_certificate_expiry_timestamp_seconds", {"region": "511102", "kind": "ca"}
    )
    assert node_expiry is not None and ca_expiry is not None
    now = datetime.now(UTC)
    assert now + timedelta(days=1) < datetime.fromtimestamp(node_expiry, UTC) <= datetime.fromtimestamp(ca_expiry, UTC)
