"""Package shape: the sans-I/O core stays free of I/O, the public API is declared, the wheel is right."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import evproto

ROOT = Path(__file__).resolve().parent.parent
CORE = ["frame.py", "messages.py", "link_table.py", "link.py", "errors.py", "endpoint.py", "backoff.py"]
IO_MODULES = {"asyncio", "socket", "serial", "serial_asyncio_fast", "selectors", "time", "threading", "subprocess"}


@pytest.mark.parametrize("name", CORE)
def test_core_modules_do_no_io(name: str) -> None:
    """Convention 1: no asyncio, sockets, serial, clocks or logging handlers in the core."""
    tree = ast.parse((ROOT / "evproto" / name).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_MODULES, imported & IO_MODULES
    assert "logging" not in imported


def test_public_names_exist_and_errors_share_one_root() -> None:
    for name in evproto.__all__:
        assert hasattr(evproto, name), name
    for name in ("lrc", "encode_frame", "FrameDecoder"):
        assert name in evproto.__all__
    exceptions = [
        obj for obj in map(lambda n: getattr(evproto, n), evproto.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(exceptions) >= 10 and all(issubclass(e, evproto.EvprotoError) for e in exceptions)


def test_library_installs_only_a_null_handler() -> None:
    import logging

    handlers = logging.getLogger("evproto").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


@pytest.mark.slow
def test_wheel_maps_folders_into_the_evproto_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("evproto-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "evproto/__init__.py",
        "evproto/py.typed",
        "evproto/aio/__init__.py",
        "evproto/daemons/__init__.py",
        "evproto/hw/__init__.py",
        "evproto/firmware_sim/__init__.py",
    ):
        assert expected in names
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"daemons", "hw", "firmware_sim", "tests", "benchmarks"}, tops


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "evproto.daemons.demo", "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in (
        "ENQ/ACK, Hello, Accept done",
        "health check -> OK",
        "delivered anyway: 1 NACK received, 1 resend",
        "health check -> KO fault=SIMULATED",
        "peer_silent",
        "reconnected on attempt",
        "link lost: peer_closed (clean goodbye)",
    ):
        assert line in out, f"missing {line!r} in demo output:\n{out}"
    assert "Traceback" not in proc.stderr
