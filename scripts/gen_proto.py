"""Generate the Python protobuf/gRPC modules and type stubs from proto/ into gen/python/.

Usage:
    python scripts/gen_proto.py           # regenerate gen/python (stale files are removed first)
    python scripts/gen_proto.py --check   # exit 1, listing differing files, when gen/python is stale

Generated modules import along the proto path, e.g. ``from lianxin.intake.v1 import
intake_service_pb2``. Never edit the generated files; change the .proto and run this script.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "gen" / "python"
PACKAGE = "lianxin"
# Owned by the repository, not by the generator: preserved as it is (created empty if missing).
PRESERVED = (Path(PACKAGE) / "__init__.py",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    """All .proto files of the contract, relative to proto/, in a stable order."""
    return sorted(p.relative_to(PROTO_DIR) for p in (PROTO_DIR / PACKAGE).rglob("*.proto"))


def well_known_include() -> Path:
    """grpc_tools' bundled well-known protos (google/protobuf/timestamp.proto, ...)."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def mypy_plugins() -> list[str] | None:
    """protoc --plugin arguments for mypy-protobuf, or None when it is not installed."""
    bindirs = [Path(sys.executable).parent, *(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep))]
    found: list[str] = []
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        path = next((d / name for d in bindirs if (d / name).is_file() and os.access(d / name, os.X_OK)), None)
        if path is None:
            return None
        found.append(f"--plugin={name}={path}")
    return found


def run_protoc(out: Path) -> None:
    """Generate every module and stub into out (which must exist)."""
    files = [str(p) for p in proto_files()]
    if not files:
        sys.exit(f"no .proto files under {PROTO_DIR / PACKAGE}")
    base = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known_include()}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
    ]
    plugins = mypy_plugins()
    if plugins is not None:
        # Servers and clients are sync grpcio (DESIGN §4), so the gRPC stubs skip the aio overloads.
        stubs = [*plugins, f"--mypy_out={out}", f"--mypy_grpc_out=only_sync:{out}"]
    else:
        stubs = [f"--pyi_out={out}"]
    result = subprocess.run([*base, *stubs, *files], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.exit(f"protoc failed with exit code {result.returncode}")
    # Every directory holding generated modules becomes a regular package.
    for module in list(out.rglob("*.py")):
        package = module.parent
        while package != out:
            init = package / "__init__.py"
            if not init.exists() and init.relative_to(out) not in PRESERVED:
                init.write_text("")
            package = package.parent
    for preserved in PRESERVED:
        target = out / preserved
        source = OUT_DIR / preserved
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.exists() and source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        elif not target.exists():
            target.write_text("")


def tree(root: Path) -> set[Path]:
    """Relative paths of the files under root/lianxin, ignoring bytecode caches."""
    base = root / PACKAGE
    if not base.exists():
        return set()
    return {
        p.relative_to(root)
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def is_generated(rel: Path) -> bool:
    """True for files this script produces (and may therefore delete)."""
    if rel in PRESERVED:
        return False
    return rel.name == "__init__.py" or rel.name.endswith(GENERATED_SUFFIXES)


def remove_stale() -> None:
    """Delete previously generated files and the directories they leave empty."""
    for rel in sorted(tree(OUT_DIR)):
        if is_generated(rel):
            (OUT_DIR / rel).unlink()
    base = OUT_DIR / PACKAGE
    if base.exists():
        for directory in sorted((d for d in base.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            cache = directory / "__pycache__"
            if cache.is_dir():
                shutil.rmtree(cache)
            if not any(directory.iterdir()):
                directory.rmdir()


def generate() -> None:
    remove_stale()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    run_protoc(OUT_DIR)
    print(f"generated {len(tree(OUT_DIR))} files under {OUT_DIR.relative_to(ROOT)}")


def check() -> int:
    with tempfile.TemporaryDirectory(prefix="lianxin-gen-") as tmp:
        fresh_root = Path(tmp)
        run_protoc(fresh_root)
        fresh, current = tree(fresh_root), tree(OUT_DIR)
        problems = [f"missing: {p}" for p in sorted(fresh - current)]
        problems += [f"stale (not generated any more): {p}" for p in sorted(current - fresh) if is_generated(p)]
        problems += [
            f"differs: {p}"
            for p in sorted(fresh & current)
            if not filecmp.cmp(fresh_root / p, OUT_DIR / p, shallow=False)
        ]
    if problems:
        print(f"{OUT_DIR.relative_to(ROOT)} is stale; run: python scripts/gen_proto.py")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"{OUT_DIR.relative_to(ROOT)} is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when gen/python differs from proto/")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    generate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
