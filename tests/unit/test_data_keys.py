"""Data keys are never a constant: a node makes its own on first start, production refuses to run without."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.common.crypto import KEY_FILE, cipher_from_env
from tests.support.cli import lianxin, one_error_line

NO_KEYS = {"LIANXIN_DATA_KEYS": "", "LIANXIN_DATA_KEYS_FILE": "", "LIANXIN_DATA_KEY": ""}


def test_a_node_without_configured_keys_makes_its_own_key_once_and_keeps_it(tmp_path: Path) -> None:
    node_dir = tmp_path / "511102"
    first = cipher_from_env(NO_KEYS, key_dir=node_dir)
    blob = first.encrypt("13700137000", context="cases.phone")
    again = cipher_from_env(NO_KEYS, key_dir=node_dir)  # the next start, another service of the node
    assert again.decrypt(blob, context="cases.phone") == "13700137000"
    assert stat.S_IMODE(os.stat(node_dir / KEY_FILE).st_mode) == 0o600


def test_two_nodes_never_share_a_key(tmp_path: Path) -> None:
    county = cipher_from_env(NO_KEYS, key_dir=tmp_path / "511102")
    other = cipher_from_env(NO_KEYS, key_dir=tmp_path / "511111")
    blob = county.encrypt("赵大海", context="cases.name")
    with pytest.raises(Exception):  # noqa: B017 - unknown key id or failed tag, either way unreadable
        other.decrypt(blob, context="cases.name")
    assert county.blind_index("phone", "13700137000") != other.blind_index("phone", "13700137000")


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (("serve", "--service", "intake"), {}),
        # eventlet prints a deprecation warning on import, which is not this command's error line
        (
            ("worker", "--service", "intake"),
            {"LIANXIN_AMQP_URI": "amqp://guest:guest@127.0.0.1:1/none", "PYTHONWARNINGS": "ignore"},
        ),
    ],
)
def test_production_processes_refuse_to_start_without_data_keys(
    tmp_path: Path, command: tuple[str, ...], env: dict[str, str]
) -> None:
    result = lianxin(*command, env={**NO_KEYS, "LIANXIN_NODE": "511102", "LIANXIN_DATA_DIR": str(tmp_path), **env})
    assert result.returncode != 0
    line = one_error_line(result)
    assert "LIANXIN_DATA_KEYS" in line and command[0] in line
    assert not (tmp_path / "511102" / KEY_FILE).exists()
