"""The launcher and the programs' command lines, as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys

import pytest
from netharness import launcher_api, wait_for

from evproto.daemons.files import makedirs, open_private, save_json_atomic, write_ready_file

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
PROGRAMS = [
    "ev-central",
    "EV_Central",
    "evcp-engine",
    "EV_CP_E",
    "evcp-monitor",
    "EV_CP_M",
    "ev-driver",
    "EV_Driver",
    "evcharging",
]


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_and_alias_answers_help_and_version(program: str) -> None:
    exe = shutil.which(program, path=BIN)
    assert exe, f"{program} is not installed next to {sys.executable}"
    helped = run(exe, "--help")
    assert helped.returncode == 0 and "Usage:" in helped.stdout
    versioned = run(exe, "--version")
    assert versioned.returncode == 0 and "0." in versioned.stdout


def test_missing_kafka_is_a_usage_error_not_a_traceback(tmp_path) -> None:
    r = run(os.path.join(BIN, "ev-central"), "--db", str(tmp_path / "c.db"))
    assert r.returncode == 2 and "--kafka" in r.stderr and "Traceback" not in r.stderr
    r = run(os.path.join(BIN, "ev-driver"), "--kafka", "x:1", "--id", "D1", "--requests", str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_bad_requests_file_names_the_line(tmp_path) -> None:
    f = tmp_path / "req.txt"
    f.write_text("CP001\nCP002 fast\n")
    r = run(os.path.join(BIN, "ev-driver"), "--kafka", "127.0.0.1:1", "--id", "D1", "--requests", str(f))
    assert r.returncode == 64 and "req.txt:2" in r.stderr and "2.5kWh" in r.stderr


def test_central_registry_subcommands(tmp_path) -> None:
    central = os.path.join(BIN, "ev-central")
    db = str(tmp_path / "c.db")
    assert "D1: registered" in run(central, "--db", db, "drivers", "add", "D1", "D2").stdout
    assert "D1: already registered" in run(central, "--db", db, "drivers", "add", "D1").stdout
    assert run(central, "--db", db, "drivers", "list").stdout.split() == ["D1", "D2"]
    assert (
        "CP9: registered"
        in run(central, "--db", db, "cps", "add", "CP9", "--location", "Elche", "--price", "0.3").stdout
    )
    assert "CP9\tElche\t0.30 EUR/kWh" in run(central, "--db", db, "cps", "list").stdout


def test_up_ps_down(tmp_path) -> None:
    ev = os.path.join(BIN, "evcharging")
    run_dir = str(tmp_path / "run")
    up = run(
        ev, "up", "--cps", "2", "--drivers", "1", "--run-dir", run_dir, "--http-port", "0", "--detach", timeout=120
    )
    assert up.returncode == 0, up.stderr
    try:
        rows = json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout)
        assert {(r["role"], r["id"]) for r in rows} == {
            ("broker", None),
            ("registry", None),
            ("central", None),
            ("engine", "CP001"),
            ("engine", "CP002"),
            ("monitor", "CP001"),
            ("monitor", "CP002"),
            ("driver", "D001"),
            ("weather-sim", None),
            ("weather", None),
        }
        assert all(r["alive"] and r["pid"] for r in rows) and all(
            {"name", "role", "id", "pid", "alive"} <= set(r) for r in rows
        )
        again = run(ev, "up", "--run-dir", run_dir, "--detach")
        assert again.returncode != 0 and "already runs" in again.stderr
        table = run(ev, "ps", "--run-dir", run_dir).stdout
        assert "engine-CP001" in table and "up" in table
    finally:
        down = run(ev, "down", "--run-dir", run_dir, timeout=60)
    assert down.returncode == 0 and "stopped 10" in down.stdout
    rows = json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout)
    assert rows and not any(r["alive"] for r in rows)


def test_up_shows_the_panel_with_live_tiles_on_a_terminal(tmp_path) -> None:
    """`evcharging up` in a real terminal (a pty) draws Central's panel; q stops everything."""
    run_dir = str(tmp_path / "run")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal session running the launcher
        os.environ["COLUMNS"], os.environ["LINES"] = "100", "40"
        os.execv(
            os.path.join(BIN, "evcharging"),
            ["evcharging", "up", "--cps", "2", "--drivers", "1", "--run-dir", run_dir, "--http-port", "0"],
        )
    screen = bytearray()

    def read_some() -> bytes:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                screen.extend(os.read(fd, 65536))
            except OSError:
                pass
        return bytes(screen)

    try:
        wait_for(
            lambda: b"CP002" in read_some() and (b"ACTIVATED" in screen or b"SUPPLYING" in screen),
            "the panel's tiles",
            timeout_s=60,
        )
        assert b"EV Charging Network: Central" in screen
        os.write(fd, b"q\r")
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid or read_some() is None, "the launcher to exit", 60)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        subprocess.run([os.path.join(BIN, "evcharging"), "down", "--run-dir", run_dir], capture_output=True, timeout=60)
        os.close(fd)
    rows = json.loads(run(os.path.join(BIN, "evcharging"), "ps", "--run-dir", run_dir, "--json").stdout)
    assert not any(r["alive"] for r in rows)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_up_in_the_foreground_takes_the_network_down_when_killed(tmp_path, sig) -> None:
    """`kill` or a closed terminal stops a foreground `evcharging up` and its whole network."""
    run_dir = str(tmp_path / "run")
    ev = os.path.join(BIN, "evcharging")
    log = tmp_path / "up.log"  # a file, not a pipe nobody reads while the panel writes
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [ev, "up", "--cps", "1", "--drivers", "1", "--run-dir", run_dir, "--http-port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(lambda: "network up:" in log.read_text(errors="replace"), "the network to come up", timeout_s=90)
        rows = json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout)
        # broker, registry, central, engine, monitor, driver, weather-sim, weather
        assert len(rows) == 8 and all(r["alive"] for r in rows)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        said = log.read_text(errors="replace")
        assert "stopping the network" in said, said[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([ev, "down", "--run-dir", run_dir], capture_output=True, timeout=60)
    rows = json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout)
    assert rows and not any(r["alive"] for r in rows)


def test_add_kill_start_in_a_running_network(tmp_path) -> None:
    ev = os.path.join(BIN, "evcharging")
    run_dir = str(tmp_path / "run")
    assert (
        run(
            ev, "up", "--cps", "1", "--drivers", "0", "--run-dir", run_dir, "--http-port", "0", "--detach", timeout=120
        ).returncode
        == 0
    )
    try:

        def state(cp_id: str) -> str | None:
            return next((c["state"] for c in launcher_api(run_dir, "/api/v1/cps") if c["id"] == cp_id), None)

        added = run(ev, "add", "cp", "--location", "Teruel", "--price", "0.33", "--run-dir", run_dir, timeout=120)
        assert added.returncode == 0 and "added CP002" in added.stdout, added.stderr
        wait_for(lambda: state("CP002") == "ACTIVATED", "the new CP on Central")
        dup = run(ev, "add", "cp", "--id", "CP001", "--run-dir", run_dir)
        assert dup.returncode != 0 and "already exists" in dup.stderr
        driver = run(ev, "add", "driver", "--run-dir", run_dir, timeout=120)
        assert driver.returncode == 0 and "added D001" in driver.stdout, driver.stderr
        db = json.load(open(os.path.join(run_dir, "instances.json")))["instances"]["central"]["argv"]
        listed = run(os.path.join(BIN, "ev-central"), "--db", db[db.index("--db") + 1], "drivers", "list")
        assert "D001" in listed.stdout.split()

        before = {r["name"]: r for r in json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout)}
        assert run(ev, "kill", "engine-CP001", "--run-dir", run_dir).returncode == 0
        wait_for(lambda: state("CP001") == "BROKEN", "CP001 BROKEN after its engine was killed")
        assert run(ev, "start", "engine-CP001", "--run-dir", run_dir, timeout=60).returncode == 0
        wait_for(lambda: state("CP001") == "ACTIVATED", "CP001 back after a restart on the same port")
        after = {r["name"]: r for r in json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout)}
        assert after["engine-CP001"]["pid"] != before["engine-CP001"]["pid"]
        assert after["engine-CP001"]["address"] == before["engine-CP001"]["address"]
        assert all(r["alive"] for r in after.values())
        assert run(ev, "start", "engine-CP001", "--run-dir", run_dir).returncode != 0  # already running
        assert run(ev, "kill", "nobody", "--run-dir", run_dir).returncode != 0
    finally:
        run(ev, "down", "--run-dir", run_dir, timeout=60)


# -- ports -----------------------------------------------------------------------------------


def hold_port(port: int) -> socket.socket | None:
    """Listen on ``port`` on every address, as another program would; None when something
    on this machine holds it already (then it is just as taken)."""
    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_up_with_the_default_http_port_taken_uses_a_free_one_and_says_so(tmp_path) -> None:
    ev = os.path.join(BIN, "evcharging")
    run_dir = str(tmp_path / "run")
    holder = hold_port(8000)
    try:
        up = run(ev, "up", "--cps", "1", "--drivers", "0", "--run-dir", run_dir, "--detach", timeout=120)
        try:
            assert up.returncode == 0, up.stderr
            assert "port 8000 is taken" in up.stdout
            http = json.load(open(os.path.join(run_dir, "instances.json")))["meta"]["http"]
            assert not http.endswith(":8000") and f"https://{http}/api/v1/cps" in up.stdout
            assert launcher_api(run_dir, "/api/v1/cps")[0]["id"] == "CP001"
        finally:
            run(ev, "down", "--run-dir", run_dir, timeout=60)
    finally:
        if holder is not None:
            holder.close()


@pytest.mark.parametrize("option", ["--http-port", "--port"])
def test_up_on_an_explicit_port_that_is_taken_is_one_clear_line_and_exit_69(tmp_path, option) -> None:
    ev = os.path.join(BIN, "evcharging")
    run_dir = str(tmp_path / "run")
    holder = hold_port(0)
    assert holder is not None
    port = holder.getsockname()[1]
    try:
        args = [option, str(port)] + (["--http-port", "0"] if option == "--port" else [])
        up = run(ev, "up", "--cps", "1", "--drivers", "0", "--run-dir", run_dir, *args, "--detach", timeout=120)
    finally:
        holder.close()
        run(ev, "down", "--run-dir", run_dir, timeout=60)
    assert up.returncode == 69, (up.returncode, up.stderr)  # EX_UNAVAILABLE
    assert "Traceback" not in up.stderr and len(up.stderr.strip().splitlines()) == 1, up.stderr
    assert str(port) in up.stderr and option in up.stderr
    rows = json.loads(run(ev, "ps", "--run-dir", run_dir, "--json").stdout or "[]")
    assert not any(r["alive"] for r in rows)  # nothing was left running


# -- file permissions ------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int):
    """The usual umask (022 makes files world-readable): children inherit it."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_and_ready_files_and_their_folders_are_private_whatever_the_umask(tmp_path) -> None:
    with umask(0o022):
        save_json_atomic(str(tmp_path / "a" / "b" / "state.json"), {"x": 1})
        assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700
        assert mode(tmp_path / "a" / "b" / "state.json") == 0o600
        (tmp_path / "old.json").write_text("{}")
        os.chmod(tmp_path / "old.json", 0o644)
        save_json_atomic(str(tmp_path / "old.json"), {"x": 2})  # replacing a readable file
        assert mode(tmp_path / "old.json") == 0o600
        write_ready_file(str(tmp_path / "ready.json"), listen="127.0.0.1:1")
        assert mode(tmp_path / "ready.json") == 0o600
        makedirs(str(tmp_path / "c" / "d"))
        assert mode(tmp_path / "c") == mode(tmp_path / "c" / "d") == 0o700
        makedirs(str(tmp_path / "c" / "d"))  # exists: fine
        with open_private(str(tmp_path / "c" / "log"), "ab") as fh:
            fh.write(b"x")
        assert mode(tmp_path / "c" / "log") == 0o600
        os.mkdir(tmp_path / "e", 0o755)
        makedirs(str(tmp_path / "e" / "f"))
        assert (mode(tmp_path / "e"), mode(tmp_path / "e" / "f")) == (0o755, 0o700)  # existing ones stay as they are


def test_a_network_keeps_its_files_private(tmp_path) -> None:
    """Logs, the registry, ready files, state files and request files hold drivers' charging
    history: 0600, in 0700 folders, even under umask 022."""
    ev = os.path.join(BIN, "evcharging")
    run_dir = tmp_path / "run"
    with umask(0o022):
        up = run(
            ev,
            "up",
            "--cps",
            "1",
            "--drivers",
            "1",
            "--run-dir",
            str(run_dir),
            "--http-port",
            "0",
            "--detach",
            timeout=120,
        )
    try:
        assert up.returncode == 0, up.stderr
        wait_for(
            lambda: (
                (run_dir / "cp" / "CP001" / "engine-state" / "engine-state.json").exists()
                and (run_dir / "drivers" / "D001" / "state" / "driver-state.json").exists()
            ),
            "state files",
            60,
        )
    finally:
        run(ev, "down", "--run-dir", str(run_dir), timeout=60)
    seen = []
    for path, _dirs, files in os.walk(run_dir):
        assert mode(path) == 0o700, path
        for name in files:
            if name.startswith("central.db"):
                continue  # Central's database: its own business (docs/central.md)
            seen.append(os.path.relpath(os.path.join(path, name), run_dir))
            assert mode(os.path.join(path, name)) == 0o600, seen[-1]
    assert {
        "instances.json",
        "central/central.log",
        "central/ready.json",
        "cp/CP001/engine.log",
        "cp/CP001/engine-state/engine-state.json",
        "cp/CP001/monitor.ready.json",
        "drivers/D001/requests.txt",
        "drivers/D001/state/driver-state.json",
        "broker/broker.log",
    } <= set(seen), seen


# -- audit of a network the launcher did not start -------------------------------------------


def test_audit_of_a_network_started_by_hand_from_files_gathered_anywhere(tmp_path) -> None:
    """A grader's run: programs started one by one (as on several hosts), then their files
    copied to one place under names of the grader's choosing, and audited there."""
    from netharness import Network

    from evproto.bus.broker import EmbeddedBroker

    ev = os.path.join(BIN, "evcharging")
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    with EmbeddedBroker() as broker:
        net = Network(str(hosts), broker.bootstrap)
        try:
            net.start_central("D001")
            net.start_cp("CP001", auto=True, engine_args=("--plug-delay-s", "0.5", "--time-scale", "60"))
            net.wait_state("CP001", "ACTIVATED")
            driver = net.start_driver("D001", "CP001 3s\n", "--pause-s", "0.5", "--exit-when-done")
            wait_for(lambda: driver.popen.poll() is not None, "the driver to finish its requests", timeout_s=90)
            # While Central runs, its CP states can be compared with the engines'.
            live = run(
                ev,
                "audit",
                "--db",
                str(hosts / "central.db"),
                "--engine-state",
                str(hosts / "state-CP001"),
                "--driver-state",
                str(hosts / "dstate-D001"),
                "--central-http",
                net.http.removeprefix("http://"),
                "--in-progress",
            )
            assert live.returncode == 0, live.stdout + live.stderr
            assert "CP states 1 compared with Central's" in live.stdout
        finally:
            net.close()
    grader = tmp_path / "grader"
    (grader / "host3-cp-a").mkdir(parents=True)
    for f in hosts.glob("central.db*"):
        shutil.copy(f, grader / f.name.replace("central", "host2"))
    shutil.copy(hosts / "state-CP001" / "engine-state.json", grader / "host3-cp-a")
    shutil.copy(hosts / "dstate-D001" / "driver-state.json", grader / "host1-d1.json")
    args = ["--db", str(grader / "host2.db"), "--driver-state", str(grader / "host1-d1.json")]

    books = run(ev, "audit", *args, "--engine-state", str(grader / "host3-cp-a"), "--json")
    assert books.returncode == 0, books.stdout + books.stderr
    report = json.loads(books.stdout)
    assert report["ok"] and report["tickets"] == 1 and report["engine_supplies"] == 1
    assert (report["engine_files"], report["driver_files"], report["cp_states_compared"]) == (1, 1, None)
    assert report["ticket_energy_kwh"] > 0
    assert report["metered_energy_kwh"] == pytest.approx(report["ticket_energy_kwh"])

    # The audit reads what it is given: a forgotten engine, or a tampered ledger, is caught.
    forgot = run(ev, "audit", *args)
    assert forgot.returncode == 1 and "CP001 but no engine state file covers" in forgot.stdout, forgot.stdout
    ledger = json.loads((grader / "host3-cp-a" / "engine-state.json").read_text())
    ledger["finished"][0]["energy_kwh"] += 0.5
    (grader / "host3-cp-a" / "engine-state.json").write_text(json.dumps(ledger))
    tampered = run(ev, "audit", *args, "--engine-state", str(grader / "host3-cp-a" / "engine-state.json"))
    assert tampered.returncode == 1 and "the ticket says" in tampered.stdout, tampered.stdout

    wrong = run(ev, "audit", *args, "--engine-state", str(grader / "nowhere"))
    assert wrong.returncode == 2 and "nowhere" in wrong.stderr and "Traceback" not in wrong.stderr
    both = run(ev, "audit", "--run-dir", str(tmp_path), *args)
    assert both.returncode == 2 and "not both" in both.stderr


# -- Kafka client settings ----------------------------------------------------------------------


def test_up_hands_kafka_client_settings_to_every_daemon_in_a_private_file(tmp_path, broker) -> None:
    """`up --kafka-config` (for a Kafka with SASL/TLS): the settings (passwords among them) reach
    Central, engines and drivers through RUN/secrets/kafka.conf (0600), never a command line."""
    ev = os.path.join(BIN, "evcharging")
    run_dir = tmp_path / "run"
    # Without --kafka there is nothing to apply them to: the embedded broker is plaintext.
    alone = run(ev, "up", "--run-dir", str(run_dir), "--kafka-config", "socket.keepalive.enable=true", "--detach")
    assert alone.returncode == 2 and "--kafka" in alone.stderr and not (run_dir / "instances.json").exists()
    bad = run(
        ev,
        "up",
        "--run-dir",
        str(run_dir),
        "--kafka",
        broker.bootstrap,
        "--kafka-config",
        "no.such.setting=1",
        "--detach",
    )
    assert bad.returncode == 2 and "no.such.setting" in bad.stderr and not (run_dir / "instances.json").exists()
    up = run(
        ev,
        "up",
        "--cps",
        "1",
        "--drivers",
        "1",
        "--run-dir",
        str(run_dir),
        "--http-port",
        "0",
        "--detach",
        "--kafka",
        broker.bootstrap,
        "--kafka-config",
        "socket.keepalive.enable=true",
        "--kafka-config",
        "client.rack=rack-7",
        timeout=120,
    )
    try:
        assert up.returncode == 0, up.stderr
        conf = run_dir / "secrets" / "kafka.conf"
        assert mode(str(conf)) == 0o600
        assert "socket.keepalive.enable=true" in conf.read_text() and "client.rack=rack-7" in conf.read_text()

        def supplying() -> bool:
            cps = launcher_api(str(run_dir), "/api/v1/cps")
            return any(cp["id"] == "CP001" and cp["state"] == "SUPPLYING" for cp in cps)

        wait_for(supplying, "CP001 to supply through the configured Kafka clients", 90)
        with open(run_dir / "instances.json", encoding="utf-8") as fh:
            instances = json.load(fh)["instances"]
        for inst in instances.values():
            argv = inst["argv"]
            if inst["role"] in ("central", "engine", "driver"):
                assert argv[argv.index("--kafka-config-file") + 1] == str(conf), inst["name"]
            assert not any("rack-7" in a for a in argv), inst["name"]
        env = run(ev, "env", "--run-dir", str(run_dir))
        assert f"EVPROTO_KAFKA_CONFIG_FILE={conf}" in env.stdout.replace("'", "")
    finally:
        run(ev, "down", "--run-dir", str(run_dir), timeout=60)
