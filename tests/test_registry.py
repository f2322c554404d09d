"""ev-registry as a real process over HTTPS (the network's own CA), with tokens made by
``ev-central tokens``, and the hash-chained audit log both write.

Tried as an installer, an operator with the wrong role, an anonymous client and a web
page on another site would."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from evproto import auth
from evproto.aio import tls_client_context
from evproto.daemons.auditlog import AuditLog, read_entries, verify
from evproto.daemons.credentials import CredentialStore
from evproto.daemons.pki import CertificateAuthority

GUARD_S = 30


def _cli(*args: str, db: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evproto.daemons.central", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )


class Registry:
    def __init__(self, tmp: Path, *, insecure: bool = False) -> None:
        self.db = tmp / "central.db"
        self.ca = CertificateAuthority.ensure(tmp / "pki")
        cert = self.ca.issue("registry", tmp / "pki", hosts=("127.0.0.1", "localhost"))
        ready = tmp / "registry.ready"
        self.log = tmp / "registry.log"
        args = [
            sys.executable,
            "-m",
            "evproto.daemons.registry",
            "--db",
            str(self.db),
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--scrypt-cost",
            "10",
            "--log-format",
            "json",
        ]
        args += ["--insecure"] if insecure else ["--cert", str(cert.cert), "--key", str(cert.key)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + GUARD_S
        while not ready.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "registry did not start"
            time.sleep(0.05)
        self.url = json.loads(ready.read_text())["url"]
        self.tls = None if insecure else tls_client_context(ca=str(self.ca.cert_path))

    def token(self, role: str, name: str = "alice") -> str:
        # In this process (what `ev-central tokens create` runs; the command itself is tested below).
        from evproto.daemons.tokens import TokenRole, TokenStore

        store = TokenStore(str(self.db))
        try:
            return store.create(TokenRole(role), name)[0]
        finally:
            store.close()

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, object]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + "/api/v1" + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=GUARD_S) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(GUARD_S)


@pytest.fixture
def start_registry(tmp_path):
    """``start_registry(insecure=False)``: ev-registry as a real process, stopped at teardown."""
    started: list[Registry] = []

    def start(**kw) -> Registry:
        started.append(Registry(tmp_path, **kw))
        return started[-1]

    yield start
    for reg in started:
        reg.stop()


@pytest.fixture
def registry(start_registry) -> Registry:
    return start_registry()


def test_an_installer_registers_a_cp_and_gets_a_secret_that_only_the_cp_keeps(registry: Registry) -> None:
    installer = registry.token("installer")
    status, body = registry.call("POST", "/cps", {"id": "CP001", "location": "Alicante"}, token=installer)
    assert status == 201, body
    secret = body["secret"]
    assert body["id"] == "CP001" and body["location"] == "Alicante" and len(secret) == 43
    # The secret proves itself against what the registry stored, and is stored nowhere.
    stored = CredentialStore(str(registry.db)).stored("CP001")
    client = auth.ClientSession("CP001", secret)
    nonce = client.start()
    challenge = stored.challenge()
    auth.verify_proof(stored, auth.auth_message("CP001", nonce, challenge), client.answer(challenge))
    registry.stop()
    for path in registry.db.parent.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert stat.S_IMODE(os.stat(registry.db).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(registry.db) + ".audit.jsonl").st_mode) == 0o600


def test_listing_and_reading_show_no_secret_and_unregistering_stops_authentication(registry: Registry) -> None:
    installer = registry.token("installer")
    registry.call("POST", "/cps", {"id": "CP001", "location": "Alicante"}, token=installer)
    registry.call("POST", "/cps", {"id": "CP002", "location": "Elche"}, token=installer)
    status, cps = registry.call("GET", "/cps", token=installer)
    assert status == 200 and [c["id"] for c in cps] == ["CP001", "CP002"]
    assert all(set(c) == {"id", "location", "registered_at", "registered_by"} for c in cps)
    assert registry.call("GET", "/cps/CP002", token=installer)[1]["location"] == "Elche"
    assert registry.call("DELETE", "/cps/CP002", token=installer) == (200, {"ok": True, "unregistered": "CP002"})
    assert registry.call("GET", "/cps/CP002", token=installer)[0] == 404
    assert registry.call("DELETE", "/cps/CP002", token=installer)[0] == 404
    assert CredentialStore(str(registry.db)).stored("CP002") is None
    # A registered id is not issued twice.
    status, body = registry.call("POST", "/cps", {"id": "CP001", "location": "X"}, token=installer)
    assert status == 409 and "already registered" in body["error"]


@pytest.mark.parametrize(
    "body, raw, why",
    [
        ({"id": "CP001\u200b", "location": "Alicante"}, None, "invisible"),
        ({"id": "", "location": "Alicante"}, None, "CP id"),
        ({"id": "CP001", "location": ""}, None, "location"),
        ({"id": 7, "location": "Alicante"}, None, "CP id"),
        ([1, 2], None, "JSON object"),
        (None, b"{not json", "not valid JSON"),
    ],
)
def test_a_bad_registration_is_a_400_that_says_why(registry: Registry, body, raw, why) -> None:
    installer = registry.token("installer")
    headers = {"Content-Type": "application/json"} if raw is not None else None
    status, answer = registry.call("POST", "/cps", body, raw=raw, token=installer, headers=headers)
    assert status == 400 and why in answer["error"], answer
    assert registry.call("GET", "/cps", token=installer) == (200, [])


def test_only_installer_or_admin_tokens_may_call_it_and_a_page_on_another_site_never(registry: Registry) -> None:
    cp = {"id": "CP009", "location": "Alicante"}
    assert registry.call("POST", "/cps", cp)[0] == 401
    assert registry.call("GET", "/cps", token="evp_00000000_guess")[0] == 401
    assert registry.call("GET", "/cps", token="not even the format")[0] == 401
    status, body = registry.call("POST", "/cps", cp, token=registry.token("operator", "bob"))
    assert status == 403 and "needs installer" in body["error"]
    assert registry.call("GET", "/cps", token=registry.token("viewer", "eve"))[0] == 403
    admin = registry.token("admin", "root")
    # A cross-site form POST (text/plain, another Origin) carries no JSON and is refused even with a token.
    status, _ = registry.call(
        "POST",
        "/cps",
        raw=json.dumps(cp).encode(),
        token=admin,
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert status == 403
    status, _ = registry.call("POST", "/cps", cp, token=admin, headers={"Origin": "https://evil.example"})
    assert status == 403
    assert registry.call("GET", "/cps", token=admin) == (200, [])
    assert registry.call("POST", "/cps", cp, token=admin)[0] == 201
    # Made by the command line, shown once, revocable: it stops working at once.
    made = _cli("tokens", "create", "--role", "admin", "--name", "root2", db=registry.db)
    assert made.returncode == 0 and made.stdout.startswith("evp_"), made.stderr
    assert registry.call("GET", "/cps", token=made.stdout.strip())[0] == 200
    token_id = admin.split("_")[1]
    assert _cli("tokens", "revoke", token_id, db=registry.db).returncode == 0
    assert registry.call("GET", "/cps", token=admin)[0] == 401
    listed = _cli("tokens", "list", db=registry.db).stdout
    assert "REVOKED" in listed and admin.split("_", 2)[2] not in listed


def test_every_registration_refusal_and_token_use_is_in_the_audit_log_and_no_secret_is(registry: Registry) -> None:
    installer = registry.token("installer")
    _, body = registry.call("POST", "/cps", {"id": "CP001", "location": "Alicante"}, token=installer)
    registry.call("POST", "/cps", {"id": "CP001", "location": "Alicante"}, token=installer)
    registry.call("DELETE", "/cps/CP001", token=installer)
    registry.call("GET", "/cps", token="evp_bad_token")
    registry.stop()
    audit = str(registry.db) + ".audit.jsonl"
    entries = read_entries(audit)
    seen = {(e["action"], e["object"], e["outcome"]) for e in entries}
    assert {
        ("register", "cp:CP001", "ok"),
        ("register", "cp:CP001", "refused"),
        ("unregister", "cp:CP001", "ok"),
        ("registry:GET", "/api/v1/cps", "refused"),
    } <= seen
    assert all(e["source"] == "127.0.0.1" for e in entries if e["action"] != "token-create")
    text = Path(audit).read_text() + registry.log.read_text()
    assert body["secret"] not in text and installer not in text and installer.split("_", 2)[2] not in text
    assert verify(audit).ok


def test_plain_http_to_the_registry_gets_nothing(registry: Registry) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(registry.url.replace("https://", "http://") + "/api/v1/cps", timeout=GUARD_S)


def test_insecure_mode_is_plain_http_and_says_so(start_registry) -> None:
    reg = start_registry(insecure=True)
    assert reg.url.startswith("http://")
    assert reg.call("POST", "/cps", {"id": "CP1", "location": "A"}, token=reg.token("installer"))[0] == 201
    reg.stop()
    assert "WARNING: --insecure" in reg.log.read_text()


def test_without_a_certificate_it_refuses_to_start_rather_than_serve_plain_http(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "evproto.daemons.registry", "--db", str(tmp_path / "c.db"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )
    assert run.returncode == 2 and "--cert and --key" in run.stderr


# -- the audit log's chain -----------------------------------------------------------------------


def _three(tmp_path) -> str:
    path = str(tmp_path / "audit.jsonl")
    log = AuditLog(path)
    for i in range(3):
        log.record(actor="cli", source="cli", action="stop", obj=f"cp:CP00{i}", outcome="ok")
    log.close()
    return path


def _edit(path: str, change) -> None:
    lines = Path(path).read_text().splitlines(keepends=True)
    Path(path).write_text("".join(change(lines)))


@pytest.mark.parametrize(
    "what, change, line",
    [
        ("edited", lambda ls: [ls[0], ls[1].replace("CP001", "CP666"), ls[2]], 2),
        ("deleted", lambda ls: [ls[0], ls[2]], 2),
        ("reordered", lambda ls: [ls[1], ls[0], ls[2]], 1),
        ("inserted", lambda ls: [ls[0], ls[0], ls[1], ls[2]], 2),
        ("garbage", lambda ls: [ls[0], "hello\n", ls[1], ls[2]], 2),
    ],
)
def test_editing_deleting_or_inserting_a_line_breaks_the_chain_where_it_happened(tmp_path, what, change, line) -> None:
    path = _three(tmp_path)
    assert verify(path).ok and verify(path).entries == 3
    _edit(path, change)
    result = verify(path)
    assert not result.ok and result.bad_line == line, (what, result)
    run = _cli("audit", "verify", "--log", path, db=tmp_path / "c.db")
    assert run.returncode == 1 and f"line {line}" in run.stderr


def test_two_processes_appending_keep_one_chain(tmp_path) -> None:
    path = str(tmp_path / "audit.jsonl")
    code = (
        "import sys; from evproto.daemons.auditlog import AuditLog; log = AuditLog(sys.argv[1]); "
        "[log.record(actor=sys.argv[2], source='cli', action='x', obj=str(i), outcome='ok') for i in range(200)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, path, who]) for who in ("central", "registry")]
    assert [p.wait(GUARD_S) for p in procs] == [0, 0]
    result = verify(path)
    assert result.ok and result.entries == 400


def test_secrets_cannot_be_written_to_the_audit_log(tmp_path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    with pytest.raises(ValueError, match="secrets"):
        log.record(actor="x", source="y", action="z", obj="o", outcome="ok", secret="s3cr3t")


def test_a_flood_of_refusals_writes_a_line_a_second_and_counts_the_rest(tmp_path) -> None:
    path = str(tmp_path / "a.jsonl")
    log = AuditLog(path)
    written = [
        log.record(
            actor="anonymous", source="10.0.0.9", action="auth", obj="cp:CP001", outcome="refused", coalesce="10.0.0.9"
        )
        for _ in range(1000)
    ]
    assert sum(w is not None for w in written) == 1
    log._held["10.0.0.9"] = (0.0, log._held["10.0.0.9"][1])  # as if a second had passed
    entry = log.record(
        actor="anonymous", source="10.0.0.9", action="auth", obj="cp:CP001", outcome="refused", coalesce="10.0.0.9"
    )
    assert entry is not None and entry["details"]["held_back"] == 999
