"""evproto.auth: a credential proved without being sent, checked against the golden
vector in docs/security.md and against every way an attacker could bend the exchange."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from evproto import AuthChallenge, AuthProof, AuthResult, CpKey, ReasonCode, auth, decode_body, encode_body
from evproto.auth import AuthError, ClientSession, StoredCredential

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"
FAST = (10, 8, 1)  # scrypt parameters that keep the tests quick; the exchange is the same


def _golden() -> dict:
    m = re.search(r"<!-- golden:auth -->\n```json\n(.*?)```\n<!-- /golden:auth -->", DOC.read_text(), re.S)
    assert m, "golden:auth missing from docs/security.md"
    return json.loads(m.group(1))


def _exchange(
    stored: StoredCredential, client: ClientSession, node_id: str | None = None, key: bytes = bytes(32)
) -> tuple[bytes, bytes, bytes, bytes]:
    """Run one exchange; returns (proof, server's client_key, wrapped key, signature)."""
    nonce = client.start()
    challenge = stored.challenge()
    proof = client.answer(challenge)
    message = auth.auth_message(node_id or client.node_id, nonce, challenge)
    client_key = auth.verify_proof(stored, message, proof)
    wrapped = auth.wrap_key(client_key, message, key)
    return proof, client_key, wrapped, auth.server_signature(stored, message, key_id="k", wrapped_key=wrapped)


def test_the_golden_vector_of_docs_security_md() -> None:
    g = _golden()
    stored = auth.hash_secret(g["secret"], params=tuple(g["params"]), salt=bytes.fromhex(g["salt"]))
    assert stored.to_text() == g["stored"]
    assert StoredCredential.from_text(g["stored"]) == stored
    challenge = stored.challenge(server_nonce=bytes.fromhex(g["server_nonce"]))
    client = ClientSession(g["node_id"], g["secret"])
    client.start()
    client.client_nonce = bytes.fromhex(g["client_nonce"])
    proof = client.answer(challenge)
    message = auth.auth_message(g["node_id"], client.client_nonce, challenge)
    assert message.hex() == g["auth_message"] and proof.hex() == g["proof"]
    client_key = auth.verify_proof(stored, message, proof)
    key = bytes.fromhex(g["key"])
    wrapped = auth.wrap_key(client_key, message, key)
    assert wrapped.hex() == g["wrapped_key"]
    signature = auth.server_signature(stored, message, key_id=g["key_id"], wrapped_key=wrapped)
    assert signature.hex() == g["signature"]
    assert client.finish(signature, key_id=g["key_id"], wrapped_key=wrapped) == key


def test_a_right_secret_authenticates_and_both_ends_share_the_key_without_sending_it() -> None:
    secret = auth.new_secret()
    assert len(secret) == 43
    stored = auth.hash_secret(secret, params=FAST)
    client = ClientSession("CP001", secret)
    key = bytes(range(32))
    proof, client_key, wrapped, signature = _exchange(stored, client, key=key)
    assert client.finish(signature, key_id="k", wrapped_key=wrapped) == key
    assert secret.encode() not in proof + wrapped + signature and key not in proof + wrapped + signature
    assert secret not in stored.to_text() and secret not in repr(client)


def test_a_wrong_secret_is_refused() -> None:
    stored = auth.hash_secret("the real one", params=FAST)
    with pytest.raises(AuthError, match="wrong credentials"):
        _exchange(stored, ClientSession("CP001", "a guess"))


def test_a_proof_is_bound_to_its_node_and_nonces_so_it_cannot_be_replayed_or_moved() -> None:
    stored = auth.hash_secret("s", params=FAST)
    client = ClientSession("CP001", "s")
    nonce = client.start()
    challenge = stored.challenge()
    proof = client.answer(challenge)
    # Replayed against a fresh challenge (a new server nonce), or claimed for another node id:
    for message in (
        auth.auth_message("CP001", nonce, stored.challenge()),
        auth.auth_message("CP002", nonce, challenge),
    ):
        with pytest.raises(AuthError):
            auth.verify_proof(stored, message, proof)


def test_a_server_without_the_stored_credential_cannot_pass_itself_off_as_central() -> None:
    real = auth.hash_secret("s", params=FAST)
    client = ClientSession("CP001", "s")
    nonce = client.start()
    challenge = real.challenge()
    client.answer(challenge)
    message = auth.auth_message("CP001", nonce, challenge)
    impostor = StoredCredential(salt=real.salt, log2_n=10, r=8, p=1, stored_key=real.stored_key, server_key=bytes(32))
    with pytest.raises(AuthError, match="could not prove"):
        client.finish(auth.server_signature(impostor, message))


@pytest.mark.parametrize("field", ["key_id", "wrapped_key", "verify_key"])
def test_what_the_server_grants_cannot_be_changed_on_the_way(field: str) -> None:
    stored = auth.hash_secret("s", params=FAST)
    client = ClientSession("CP001", "s")
    _, _, wrapped, signature = _exchange(stored, client)
    granted = {"key_id": "k", "wrapped_key": wrapped, "verify_key": b""}
    granted[field] = "k2" if field == "key_id" else bytes(32)
    with pytest.raises(AuthError):
        client.finish(signature, **granted)


@pytest.mark.parametrize("params", [(30, 8, 1), (14, 200, 1), (14, 8, 99), (5, 8, 1)])
def test_a_challenge_that_would_cost_the_client_too_much_is_refused_before_any_work(params) -> None:
    client = ClientSession("CP001", "s")
    client.start()
    log2_n, r, p = params
    with pytest.raises(AuthError, match="out of bounds"):
        client.answer(auth.Challenge(salt=bytes(16), log2_n=log2_n, r=r, p=p, server_nonce=bytes(24)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "scrypt$14$8$1$x$y",
        "bcrypt$14$8$1$AA$AA$AA",
        "scrypt$a$8$1$AA$AA$AA",
        "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$AA$AA",
    ],
)
def test_a_damaged_stored_credential_is_an_auth_error_not_a_crash(text: str) -> None:
    with pytest.raises(AuthError):
        StoredCredential.from_text(text)


def test_reconnecting_pays_scrypt_once_per_salt() -> None:
    stored = auth.hash_secret("s", params=FAST)
    client = ClientSession("CP001", "s")
    for _ in range(3):
        _exchange(stored, client)
    assert len(client._cache) == 1


@given(proof=st.binary(min_size=0, max_size=64), nonce=st.binary(min_size=16, max_size=64))
@settings(max_examples=examples(200), deadline=None)
def test_no_forged_proof_verifies(proof: bytes, nonce: bytes) -> None:
    stored = _FUZZ_STORED
    with pytest.raises(AuthError):
        auth.verify_proof(stored, auth.auth_message("CP001", nonce, stored.challenge()), proof)


_FUZZ_STORED = auth.hash_secret("fuzz", params=FAST)


def test_the_auth_messages_round_trip_on_the_wire() -> None:
    for msg in (
        AuthChallenge(salt=bytes(16), log2_n=14, r=8, p=1, server_nonce=bytes(24)),
        AuthProof(proof=bytes(32)),
        AuthResult(code=ReasonCode.OK, signature=bytes(32), key_id="k1", wrapped_key=bytes(32), verify_key=bytes(32)),
        AuthResult(code=ReasonCode.BAD_CREDENTIALS, detail="wrong credentials"),
        CpKey(key_id="k1", key=bytes(32), verify_key=bytes(32)),
        CpKey(),
    ):
        assert decode_body(encode_body(msg, seq=1)).message == msg
