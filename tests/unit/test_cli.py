"""``lianxin`` as a person at a terminal meets it: a light --help, one line per error, exit codes by kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO, closed_port, lianxin, one_error_line

# What --help must not load: each costs from tens of milliseconds (grpc) to a second (scipy).
HEAVY = {
    "grpc",
    "google",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "pydantic",
    "pydantic_settings",
    "numpy",
    "scipy",
    "sklearn",
    "matplotlib",
    "jieba",
    "nameko",
    "eventlet",
    "kombu",
    "opentelemetry",
    "prometheus_client",
    "yaml",
    "cryptography",
    "gmssl",
}


def test_help_imports_none_of_the_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from services.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split("MODULES", 1)[1].split())
    assert not loaded & HEAVY, f"lianxin --help imports {sorted(loaded & HEAVY)}"


def test_help_documents_the_exit_status_of_each_kind_of_error() -> None:
    result = lianxin("--help")
    assert result.returncode == 0
    for kind in ("2 usage", "3 invalid", "4 unavailable", "5 internal"):
        assert kind in result.stdout, kind


def test_command_line_runs_without_the_bench_tree(tmp_path: Path) -> None:
    """The image carries services/ and the generated lianxin package only (no bench/)."""
    image_like = tmp_path / "site"
    image_like.mkdir()
    (image_like / "services").symlink_to(REPO / "services")
    (image_like / "lianxin").symlink_to(REPO / "gen" / "python" / "lianxin")
    code = (
        "import sys\n"
        # drop the editable install's finder (it maps bench/ too) and the work tree
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]\n"
        f"sys.path[:0] = [{str(image_like)!r}]\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('bench') is None\n"
        "from services.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "migrate" in result.stdout and "report" in result.stdout
    assert "bench" not in result.stdout.split("positional arguments", 1)[0]


def test_unknown_option_is_a_one_line_usage_error() -> None:
    result = lianxin("report", "--region", "511100")
    assert result.returncode == 2
    assert "--month" in one_error_line(result)


def test_bad_node_setting_names_the_variable_on_one_line() -> None:
    result = lianxin("serve", "--service", "intake", env={"LIANXIN_NODE": "51abc"})
    assert result.returncode == 3
    expected = "lianxin: INVALID_ARGUMENT: LIANXIN_NODE: must be a 6-digit region code, got '51abc'"
    assert one_error_line(result) == expected


def test_report_for_month_13_is_refused_before_any_database_is_made(tmp_path: Path) -> None:
    result = lianxin(
        "report", "--region", "511100", "--month", "2026-13", "--out", str(tmp_path / "out"),
        env={"LIANXIN_DATA_DIR": str(tmp_path / "data"), "LIANXIN_DATABASE_URL": ""},
    )  # fmt: skip
    assert result.returncode == 3
    assert one_error_line(result) == "lianxin: INVALID_ARGUMENT: month: expected YYYY-MM, got '2026-13'"
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_call_with_bad_json_names_the_body() -> None:
    result = lianxin("call", f"127.0.0.1:{closed_port()}", "lianxin.intake.v1.IntakeService/SubmitCase", "{title:")
    assert result.returncode == 3
    assert one_error_line(result).startswith("lianxin: INVALID_ARGUMENT: body: not JSON")


@pytest.mark.parametrize("command", ["call", "health"])
def test_unreachable_address_is_unavailable(command: str) -> None:
    result = lianxin(command, f"127.0.0.1:{closed_port()}", *(["--list"] if command == "call" else []))
    assert result.returncode == 4
    assert one_error_line(result).startswith("lianxin: UNAVAILABLE: ")


def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/lianxin?connect_timeout=2"
    result = lianxin("migrate", "--service", "video", "--no-broker", env={"LIANXIN_DATABASE_URL": url})
    assert result.returncode == 4
    assert one_error_line(result).startswith("lianxin: UNAVAILABLE: database: ")
