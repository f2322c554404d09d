"""A launched network's secrets, kept in its run directory (``RUN/secrets``, 0700; files 0600).

What ``evcharging up`` makes so that everything speaks TLS and proves who it is:

- ``pki/``: the network's CA (``ca.pem``, ``ca.key``) and the certificates of Central
  and the registry, valid for 127.0.0.1, localhost and this host's name;
- ``tokens/``: an admin, an operator and an installer token (``ev-central tokens``);
- ``cp/CP001.json``: each CP's credentials as the registry issued them;
- ``drivers/D001.json``: each driver's key file.

One job: make and find these files. Starting processes is the launcher's.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .credentials_file import write_cp_credentials
from .files import makedirs
from .httpcall import call_json
from .pki import CertificateAuthority, IssuedCertificate, write_private
from .tokens import TokenRole, TokenStore

__all__ = ["NetworkSecrets", "RegistryError"]


class RegistryError(Exception):
    """The registry refused or could not be reached; the message says which."""


class NetworkSecrets:
    def __init__(self, run_dir: str) -> None:
        self.dir = Path(run_dir) / "secrets"
        self.pki_dir = self.dir / "pki"

    @property
    def ca_path(self) -> str:
        return str(self.pki_dir / "ca.pem")

    def ensure_pki(self) -> None:
        """The CA and the servers' certificates (made once; kept across restarts)."""
        makedirs(str(self.dir))
        ca = CertificateAuthority.ensure(self.pki_dir, name="evcharging network CA")
        hosts = ("127.0.0.1", "localhost", socket.gethostname())
        for name in ("central", "registry"):
            if not (self.pki_dir / f"{name}.pem").exists():
                ca.issue(name, self.pki_dir, hosts=hosts)

    def server_cert(self, name: str) -> IssuedCertificate:
        cert = self.pki_dir / f"{name}.pem"
        return IssuedCertificate(cert=cert, key=self.pki_dir / f"{name}.key", fingerprint_sha256="")

    def token(self, db: str, role: TokenRole) -> str:
        """The network's token for ``role`` (made on first use, kept 0600)."""
        path = self.dir / "tokens" / f"{role.value}.token"
        if path.exists():
            return path.read_text(encoding="ascii").strip()
        store = TokenStore(db)
        try:
            token, _ = store.create(role, f"evcharging-{role.value}")
        finally:
            store.close()
        write_private(path, (token + "\n").encode())
        return token

    def tls(self) -> ssl.SSLContext:
        from evproto.aio import tls_client_context

        return tls_client_context(ca=self.ca_path)

    def cp_credentials_path(self, cp_id: str) -> str:
        return str(self.dir / "cp" / f"{cp_id}.json")

    def driver_credentials_dir(self) -> str:
        return str(self.dir / "drivers")

    def register_cp(self, registry_url: str, installer_token: str, cp_id: str, location: str) -> str:
        """Register ``cp_id`` at the registry (HTTPS) and keep its credentials; their path.
        A CP registered before keeps the credentials already on file."""
        path = self.cp_credentials_path(cp_id)
        if os.path.exists(path):
            return path
        body = json.dumps({"id": cp_id, "location": location}).encode()
        request = urllib.request.Request(
            registry_url + "/api/v1/cps",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {installer_token}"},
        )
        answer = _call(request, self.tls())
        write_cp_credentials(Path(path), cp_id, answer["secret"])
        return path


def _call(request: urllib.request.Request, tls: ssl.SSLContext) -> Any:
    return call_json(request, peer="the registry", error=RegistryError, tls=tls, timeout_s=15)
