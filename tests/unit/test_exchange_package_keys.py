"""Offline package keys: no built-in default, a node's own key, production refuses, rotation at the parent."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import Settings
from services.exchange import package as pkg
from services.exchange.package import PackageKeyMissing, PackageRefused, open_package, seal, signing_key


def sealed(key: bytes) -> bytes:
    return seal(origin_node="511102", since=0, created_at="2026-12-06T08:00:00+00:00", items=[(1, b"x", 1)], key=key)


def test_there_is_no_built_in_default_key() -> None:
    source = Path(pkg.__file__).read_text(encoding="utf-8")
    assert not hasattr(pkg, "DEV_KEY") and "dev-exchange-key" not in source


def test_an_embedded_node_makes_its_own_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIANXIN_EXCHANGE_KEY", raising=False)
    county = signing_key(tmp_path / "511102", production=False)
    city = signing_key(tmp_path / "511100", production=False)
    assert county != city and len(county) >= 40
    assert signing_key(tmp_path / "511102", production=False) == county  # kept
    assert (tmp_path / "511102" / "exchange-key").stat().st_mode & 0o777 == 0o600


def test_production_refuses_to_sign_without_a_configured_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIANXIN_EXCHANGE_KEY", raising=False)
    with pytest.raises(PackageKeyMissing, match="LIANXIN_EXCHANGE_KEY"):
        signing_key(tmp_path / "511102", production=True)
    assert not (tmp_path / "511102" / "exchange-key").exists()
    monkeypatch.setenv("LIANXIN_EXCHANGE_KEY", "a-key-the-operators-chose")
    configured = Settings().exchange.package_key  # read at the command's entry point
    assert signing_key(tmp_path / "511102", production=True, configured=configured) == b"a-key-the-operators-chose"


def test_the_parent_needs_the_childs_key_and_accepts_old_and_new_during_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIANXIN_EXCHANGE_KEY", raising=False)
    city = tmp_path / "511100"
    with pytest.raises(PackageKeyMissing, match="no key for packages from 511102"):
        pkg.verification_keys(city, "511102")
    old, new = pkg.new_package_key(), pkg.new_package_key()
    (city / "exchange-keys").mkdir(parents=True)
    (city / "exchange-keys" / "511102").write_text(f"{old}\n{new}\n")
    keys = pkg.verification_keys(city, "511102")
    assert open_package(sealed(old.encode()), key=keys).origin_node == "511102"
    assert open_package(sealed(new.encode()), key=keys).origin_node == "511102"
    (city / "exchange-keys" / "511102").write_text(f"{new}\n")  # rotation finished: the old key is gone
    with pytest.raises(PackageRefused, match="signature mismatch"):
        open_package(sealed(old.encode()), key=pkg.verification_keys(city, "511102"))


def test_the_child_signs_with_the_last_key_of_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIANXIN_EXCHANGE_KEY", raising=False)
    county = tmp_path / "511102"
    first = signing_key(county, production=False)
    with (county / "exchange-key").open("a") as handle:
        handle.write("rotated-key\n")
    assert signing_key(county, production=False) == b"rotated-key" != first
