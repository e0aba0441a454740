"""The layers of services/, read from the source: rules stay pure, services stay apart, tooling stays out.

docs/kernel.md describes the shape. This test reads every module's imports (also those inside
functions, which the CLI uses to stay light) so a shortcut taken in a hurry fails here, not in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SERVICE_PACKAGES = ("intake", "routing", "exchange", "video", "stats", "web")

# Modules that hold business rules: besides every service's domain module (or package), these.
PURE_MODULES = frozenset(
    {
        "services.common.calendar",
        "services.common.categories",
        "services.common.errors",
        "services.common.identity",
        "services.common.ids",
        "services.common.personal_text",
        "services.common.regions",
        "services.common.clock",
        "services.exchange.digests",
        "services.intake.dedup",
        "services.intake.tracking",
        "services.intake.validation",
        "services.routing.evaluation",
        "services.routing.jurisdiction",
        "services.routing.leader",
        "services.routing.merging",
        "services.routing.provisional",
        "services.stats.hotspot",
        "services.stats.topics",
        "services.video.consult",
        "services.video.slots",
    }
)
# What a rule may not know about: transport, persistence, messaging, the generated contract, the web.
ADAPTER_ROOTS = frozenset(
    {
        "alembic",
        "eventlet",
        "google",
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "kombu",
        "lianxin",
        "nameko",
        "opentelemetry",
        "prometheus_client",
        "psycopg",
        "sqlalchemy",
        "starlette",
        "uvicorn",
    }
)
# Known crossings, each with the reason it is still here; the test also fails once one is gone,
# so the list only shrinks. Empty: the offline tools moved to bench/, and bench/ adds its commands
# through the "lianxin.commands" entry point.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SERVICES.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        yield module_name(path), path


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Imports under ``if TYPE_CHECKING:``: annotations only, never loaded at run time."""
    guarded: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for inner in node.body:
                guarded.update(ast.walk(inner))
    return guarded


def _absolute(package: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    return ".".join([*parts[: len(parts) - node.level + 1], node.module or ""]).strip(".")


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` loads, statically or through importlib with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    guarded = _type_checking_only(tree)
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if node in guarded:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node)
            found.add(base)
            # `from services.intake import domain` loads services.intake.domain.
            folder = ROOT / base.replace(".", "/")
            found.update(f"{base}.{alias.name}" for alias in node.names if (folder / f"{alias.name}.py").exists())
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") in {"import_module", "find_spec"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def is_pure(module: str) -> bool:
    parts = module.split(".")
    return module in PURE_MODULES or (len(parts) >= 3 and parts[2] == "domain")


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" and parts[1] in SERVICE_PACKAGES else None


EDGES = [(module, imported) for module, path in source_modules() for imported in sorted(imports_of(path))]


def test_the_source_was_read() -> None:
    # Guards the test itself: a path or parsing mistake would make every rule below pass vacuously.
    modules = {module for module, _ in EDGES}
    assert {"services.routing.domain", "services.intake.domain", "services.cli"} <= modules
    assert ("services.routing.handling.placing", "services.routing.domain") in EDGES


@pytest.mark.parametrize("pure", sorted(m for m, _ in source_modules() if is_pure(m)))
def test_rules_import_no_adapter(pure: str) -> None:
    """A rule module imports only the standard library, plain libraries and other rule modules."""
    bad = []
    for module, imported in EDGES:
        if module != pure:
            continue
        root = imported.split(".")[0]
        if root in ADAPTER_ROOTS or (
            root == "services" and not is_pure(imported) and imported not in {"services", "services.common"}
        ):
            bad.append(imported)
    assert not bad, f"{pure} is a rule module but imports {bad}"


def test_services_do_not_import_each_other() -> None:
    crossings = sorted(
        (module, imported)
        for module, imported in EDGES
        if service_of(module) and service_of(imported) and service_of(module) != service_of(imported)
    )
    assert [c for c in crossings if c not in ALLOWED] == []


def test_the_kernel_imports_no_service() -> None:
    upward = sorted(
        (module, imported)
        for module, imported in EDGES
        if module.startswith("services.common") and (service_of(imported) or imported.startswith("services.cli"))
    )
    assert upward == []


def test_services_carry_no_test_or_bench_code() -> None:
    tooling = sorted(
        (module, imported) for module, imported in EDGES if imported.split(".")[0] in {"bench", "tests", "pytest"}
    )
    assert [t for t in tooling if t not in ALLOWED] == []


def test_every_allowed_crossing_still_exists() -> None:
    assert sorted(ALLOWED - set(EDGES)) == [], "remove the crossings that are gone from ALLOWED"


# The shape's size limits (docs/kernel.md) hold for every service, the kernel and the entry points.
SIZED_SERVICES = ("intake", "routing", "stats", "video", "web", "exchange")


def _oversized(paths: list[Path]) -> list[str]:
    too_long = []
    for path in sorted(paths):
        if "migrations" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > 600:
            too_long.append(f"{path.name}: {lines} lines")
        functions = (n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        too_long += [
            f"{path.name}: {f.name} has {size} lines"
            for f in functions
            if (size := (f.end_lineno or f.lineno) - f.lineno + 1) > 80
        ]
    return too_long


@pytest.mark.parametrize("service", SIZED_SERVICES)
def test_a_shaped_service_has_no_module_over_600_lines_and_no_function_over_80(service: str) -> None:
    assert _oversized(list((SERVICES / service).rglob("*.py"))) == []


def test_the_kernel_and_the_entry_points_keep_the_same_limits() -> None:
    assert _oversized([*(SERVICES / "common").rglob("*.py"), *SERVICES.glob("*.py")]) == []


def test_every_service_package_is_held_to_the_limits() -> None:
    packages = {p.name for p in SERVICES.iterdir() if p.is_dir() and not p.name.startswith("__")} - {"common"}
    assert packages == set(SIZED_SERVICES)


def test_test_modules_share_helpers_only_through_tests_support() -> None:
    """A test module imports no other test module (nor a conftest): what tests share is in tests/support/."""
    tests = ROOT / "tests"
    crossings = []
    for path in sorted(tests.rglob("*.py")):
        if "support" in path.relative_to(tests).parts or "vendor" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            crossings += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.startswith("tests.") and not name.startswith(("tests.support", "tests.eventlet_pytest"))
            ]
    assert crossings == []
