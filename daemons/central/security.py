"""Central's security: who a monitor is, which keys seal and sign what, and the audit log.

One object, :class:`CentralSecurity`, that Central's app asks:

- ``check_hello`` / ``authenticate``: a monitor's Hello names a registered CP and
  carries a nonce; after Accept, the exchange of :mod:`evproto.auth` proves it holds
  that CP's secret, and the answer carries the CP's fresh record key (wrapped) and
  Central's verify key. Failures are refused with a reason and audited with the
  peer's address.
- ``gate`` and ``sealer``: what Central reads must be sealed or signed by whom it
  claims (:mod:`daemons.gate`); what it writes is sealed or signed at send time.
- ``revoke``: a CP's keys stop working at once.
- ``audit``: the hash-chained log (:mod:`daemons.auditlog`).

Under ``--insecure`` Central uses :func:`insecure` instead: plain records, no checks.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from evproto import AuthChallenge, AuthProof, AuthResult, Hello, ReasonCode, Reject, auth
from evproto.aio import Link
from evproto.errors import LinkDownError, RequestTimeoutError

from ..auditlog import AuditLog
from ..credentials import CredentialStore
from ..gate import PLAIN_POLICY, SECURE_POLICY, MemoryKeyBook, RecordGate, RecordSealer
from .keyring import KeyRing

__all__ = ["CentralSecurity", "Proved", "insecure_gate", "insecure_sealer", "AUTH_TIMEOUT_S"]

log = logging.getLogger("evproto.central")

#: How long a monitor has to answer the challenge.
AUTH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Proved:
    """A monitor that answered the challenge right (``client_key`` wraps its record key)."""

    cp_id: str
    message: bytes
    stored: auth.StoredCredential
    client_key: bytes

    def __repr__(self) -> str:  # never the key material
        return f"Proved(cp_id={self.cp_id!r})"


def insecure_gate() -> RecordGate:
    return RecordGate(MemoryKeyBook(), policy=PLAIN_POLICY)


def insecure_sealer() -> RecordSealer:
    return RecordSealer(policy=PLAIN_POLICY)


class CentralSecurity:
    def __init__(self, db: str, *, audit_path: str | None = None) -> None:
        self.creds = CredentialStore(db)
        self.keys = KeyRing(db)
        self.audit = AuditLog(audit_path or db + ".audit.jsonl")
        self.gate = RecordGate(self.keys, policy=SECURE_POLICY)
        self.sealer = RecordSealer(
            policy=SECURE_POLICY,
            sealing_key=self.keys.sealing_key,
            signing=(self.keys.signing_key_id, self.keys.signer),
        )

    def close(self) -> None:
        self.creds.close()
        self.keys.close()
        self.audit.close()

    # -- monitors --------------------------------------------------------------------------

    def check_hello(self, hello: Hello, source: str) -> Reject | None:
        """Before Accept: a registered CP id and a nonce to answer with. Nothing is
        reserved or changed for a link that has not proved who it is."""
        reason: Reject | None = None
        if self.creds.stored(hello.node_id) is None:
            reason = Reject(
                code=ReasonCode.UNKNOWN_ID, detail=f"{hello.node_id[:64]} is not registered at the registry"
            )
        elif not 16 <= len(hello.credentials) <= 64:
            reason = Reject(
                code=ReasonCode.BAD_CREDENTIALS,
                detail="this Central authenticates charge points: start the monitor with --credentials",
            )
        if reason is not None:
            self.audit.record(
                actor=f"cp:{hello.node_id[:64]}",
                source=source or "local",
                action="auth",
                obj=f"cp:{hello.node_id[:64]}",
                outcome="refused",
                coalesce=f"hello:{source}",
                reason=reason.detail,
            )
        return reason

    async def authenticate(self, link: Link) -> Proved | None:
        """Run the challenge on an accepted link. Returns what was proved when the proof
        is right; otherwise sends the refusal, audits it and returns None (the caller
        closes the link)."""
        hello = link.peer_hello
        assert hello is not None
        cp_id, source = hello.node_id, link.peer_address or "local"
        stored = self.creds.stored(cp_id)
        why = "not registered at the registry"
        if stored is not None:
            challenge = stored.challenge()
            try:
                message = auth.auth_message(cp_id, hello.credentials, challenge)
                answer = await link.request(
                    AuthChallenge(
                        salt=challenge.salt,
                        log2_n=challenge.log2_n,
                        r=challenge.r,
                        p=challenge.p,
                        server_nonce=challenge.server_nonce,
                    ),
                    timeout_s=AUTH_TIMEOUT_S,
                )
                if not isinstance(answer, AuthProof):
                    raise auth.AuthError(f"answered the challenge with {type(answer).__name__}")
                client_key = auth.verify_proof(stored, message, answer.proof)
                return Proved(cp_id, message, stored, client_key)
            except auth.AuthError as exc:
                why = str(exc)
            except RequestTimeoutError:
                why = "no answer to the challenge"
            except LinkDownError:
                why = "left during the challenge"
        self.audit.record(
            actor=f"cp:{cp_id}",
            source=source,
            action="auth",
            obj=f"cp:{cp_id}",
            outcome="refused",
            coalesce=f"auth:{source}:{cp_id}",
            reason=why,
        )
        log.warning("authentication of %s from %s refused: %s", ascii(cp_id[:64]), source, why)
        await self.refuse(link, ReasonCode.BAD_CREDENTIALS, why)
        return None

    async def grant(self, link: Link, proved: Proved) -> str:
        """Issue the CP a fresh record key and send it (wrapped) with Central's verify key."""
        cp_id = proved.cp_id
        key = self.keys.issue_cp_key(cp_id)
        wrapped = auth.wrap_key(proved.client_key, proved.message, key.key)
        signature = auth.server_signature(
            proved.stored, proved.message, key_id=key.key_id, wrapped_key=wrapped, verify_key=self.keys.verify_bytes
        )
        await link.send(
            AuthResult(
                code=ReasonCode.OK,
                signature=signature,
                key_id=key.key_id,
                wrapped_key=wrapped,
                verify_key=self.keys.verify_bytes,
            )
        )
        source = link.peer_address or "local"
        self.audit.record(actor=f"cp:{cp_id}", source=source, action="auth", obj=f"cp:{cp_id}", outcome="ok")
        self.audit.record(
            actor="central", source=source, action="key-issue", obj=f"cp:{cp_id}", outcome="ok", key_id=key.key_id
        )
        return key.key_id

    @staticmethod
    async def refuse(link: Link, code: ReasonCode, detail: str) -> None:
        try:
            await asyncio.wait_for(link.send(AuthResult(code=code, detail=detail[:200])), AUTH_TIMEOUT_S)
        except Exception:  # the peer may be gone already: it is refused either way
            pass

    # -- keys ------------------------------------------------------------------------------

    def revoke(self, cp_id: str, *, actor: str, source: str) -> int:
        n = self.keys.revoke_cp(cp_id)
        self.audit.record(actor=actor, source=source, action="key-revoke", obj=f"cp:{cp_id}", outcome="ok", keys=n)
        return n
