"""The Kubernetes manifests of deploy/k8s rendered by kubectl kustomize, for the deploy tests."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
# The Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.32.0"
Doc = dict[str, Any]
OVERLAYS: dict[str, dict[str, str | None]] = {
    "province": {"node": "510000", "parent": None},
    "city": {"node": "511100", "parent": "exchange-api.lianxin-510000.svc.cluster.local:50051"},
    "county": {"node": "511102", "parent": "exchange-api.lianxin-511100.svc.cluster.local:50051"},
    "dev": {"node": "511102", "parent": None},
}


def tool_missing(what: str) -> None:
    message = f"{what} is not installed"
    if os.environ.get("LIANXIN_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (LIANXIN_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
