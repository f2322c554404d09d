"""Package shape: the sans-I/O core stays free of I/O, the public API is declared, the wheel is right."""

from __future__ import annotations

import ast
import json
import os
import shutil
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
        obj
        for obj in map(lambda n: getattr(evproto, n), evproto.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(exceptions) >= 10 and all(issubclass(e, evproto.EvprotoError) for e in exceptions)


def test_library_installs_only_a_null_handler() -> None:
    import logging

    handlers = logging.getLogger("evproto").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Both distributions' wheels, built once for this file from a copy of the tree (links
    kept), so no build/ folder left in the repository by an older layout can leak into them."""
    tmp_path = tmp_path_factory.mktemp("wheels")
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
            ".hypothesis",
            ".mypy_cache",
            "evcharging-run",
            "tests",
            "benchmarks",
        ),
    )
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src), str(src / "network")],
        check=True,
        capture_output=True,
    )
    (core,) = out.glob("evproto-*.whl")
    (network,) = out.glob("evproto_network-*.whl")
    return core, network


def _metadata(wheel: Path) -> tuple[list[str], list[str], str]:
    z = zipfile.ZipFile(wheel)
    names = z.namelist()
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line.split(":", 1)[1].strip()
        for line in z.read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    scripts = next((z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    return names, requires, scripts


@pytest.mark.slow
def test_two_wheels_the_library_alone_and_the_network_on_it(wheels: tuple[Path, Path]) -> None:
    core, network = wheels
    names, requires, scripts = _metadata(core)
    for expected in (
        "evproto/__init__.py",
        "evproto/py.typed",
        "evproto/aio/__init__.py",
        "evproto/hw/__init__.py",
        "evproto/hw/modbus_maps/sdm630.json",  # register maps are package data
        "evproto/hw/modbus_maps/abb-b23.json",
        "evproto/wire.py",
    ):
        assert expected in names
    assert not [
        n
        for n in names
        if n.startswith(("evproto/daemons/", "evproto/bus/", "evproto/domain/", "evproto/firmware_sim/"))
    ]
    assert sorted(r.split("<")[0].split(">")[0].split("=")[0] for r in requires) == [
        "construct",
        "pyserial",
        "pyserial-asyncio-fast",
    ]
    assert scripts == ""  # no console scripts of the network
    names, requires, scripts = _metadata(network)
    for expected in (
        "evproto/daemons/__init__.py",
        "evproto/daemons/central/cli.py",
        "evproto/bus/kafka.py",
        "evproto/domain/chargepoint.py",
        "evproto/firmware_sim/cli.py",
        "evproto/daemons/launcher/cli.py",
        "evproto/daemons/weather/cli.py",
        # The web console's static files (package data): served from the installed package.
        "evproto/daemons/central/web/index.html",
        "evproto/daemons/central/web/login.html",
        "evproto/daemons/central/web/app.js",
        "evproto/daemons/central/web/style.css",
        "evproto/daemons/central/web/events.html",  # the event inspector's page
        "evproto/daemons/central/web/events.js",
        "evproto/daemons/central/web/events.css",
    ):
        assert expected in names
    assert "evproto/__init__.py" not in names  # the library's, not twice
    assert f"evproto[modbus]=={evproto.__version__}" in requires  # the daemons read Modbus meters too
    for script in (
        "ev-central",
        "EV_Central",
        "evcp-engine",
        "EV_CP_E",
        "evcp-monitor",
        "EV_CP_M",
        "ev-driver",
        "EV_Driver",
        "ev-registry",
        "EV_Registry",
        "evcharging",
        "evcp-meter",
        "evmeter-sim",
        "ev-weather",
        "EV_W",
        "evweather-sim",
    ):
        assert f"\n{script} = " in scripts
    for wheel in (core, network):
        tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
        assert not tops & {"daemons", "hw", "firmware_sim", "tests", "benchmarks", "network", "src"}, tops


@pytest.mark.slow
def test_a_bare_install_is_the_protocol_alone(tmp_path: Path, wheels: tuple[Path, Path]) -> None:
    """`pip install evproto` in a fresh venv: three dependencies, no console scripts, and
    importing evproto and evproto.aio loads nothing of Kafka, HTTP or the terminal UI."""
    core, _network = wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    bins_before = set(os.listdir(venv / "bin"))
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(core)],
        check=True,
        capture_output=True,
    )
    listed = json.loads(
        subprocess.run(
            [str(py), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    installed = {p["name"].lower() for p in listed} - {"pip", "setuptools", "wheel"}
    assert installed == {"evproto", "construct", "pyserial", "pyserial-asyncio-fast"}, installed
    new_bins = set(os.listdir(venv / "bin")) - bins_before
    assert not {b for b in new_bins if not b.startswith("pyserial-")}, new_bins  # pyserial's own tools only
    probe = (
        "import json, sys, time; t = time.perf_counter(); import evproto, evproto.aio; "
        "print(json.dumps([time.perf_counter() - t, sorted(sys.modules)]))"
    )
    took, modules = json.loads(
        subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True).stdout
    )
    heavy = {"confluent_kafka", "aiohttp", "rich", "click", "orjson", "cryptography"}
    assert not heavy & {m.split(".")[0] for m in modules}
    site = next((venv / "lib").glob("python3*/site-packages"))
    pip_own = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence")
    size_mb = (
        sum(
            f.stat().st_size
            for f in site.rglob("*")
            if f.is_file() and not f.relative_to(site).parts[0].startswith(pip_own)
        )
        / 1e6
    )
    print(
        f"\n[bare install] {len(installed)} packages ({', '.join(sorted(installed))}); "
        f"{size_mb:.1f} MB in site-packages besides pip; import evproto, evproto.aio: {took * 1000:.0f} ms"
    )


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
