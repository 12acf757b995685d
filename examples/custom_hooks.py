"""Writing your own hooks: no base classes, just objects with the right async methods.

* ``SignedTokens`` — stateless HMAC-signed tokens carrying role and expiry, with a set of spent
  token digests and the reservations of live sessions (so a one-time token is used once).
* ``EmailDomainIdentity`` — accepts identities whose ``email`` is in an allowed domain.
* ``JsonFileTallies`` — writes each draft tally to its own JSON file in a directory, and marks
  it committed once its session completed.
* ``PrintingAudit`` — prints each audit event (events never hold the token, only its digest).

Run: ``python examples/custom_hooks.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from pydantic import JsonValue

from taleus_bootstrap import (
    AuditEvent,
    BootstrapLink,
    DatabaseInfo,
    InviteeHooks,
    Provision,
    ProvisionRequest,
    Role,
    SessionHooks,
    TokenInfo,
    host_multiaddrs,
    initiate_bootstrap,
    new_bootstrap_host,
    open_session_manager,
    running_host,
    token_digest,
)


class SignedTokens:
    """Token hook: ``<payload>.<signature>`` tokens; spent ones are remembered by digest."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._spent: set[str] = set()
        self._reserved: dict[str, str] = {}  # digest -> session id

    def mint(self, role: Role, ttl: timedelta, requirements: dict[str, JsonValue]) -> str:
        payload = json.dumps(
            {
                "role": role,
                "exp": (datetime.now(UTC) + ttl).timestamp(),
                "req": requirements,
                "nonce": secrets.token_hex(8),
            }
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:32]

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        body, _, signature = token.partition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        expires = datetime.fromtimestamp(claims["exp"], UTC)
        digest = token_digest(token)
        if expires <= datetime.now(UTC) or digest in self._spent or digest in self._reserved:
            return None
        self._reserved[digest] = session_id  # no await since the check: atomic under trio
        return TokenInfo(
            inviter_role=claims["role"], expires_at=expires, identity_requirements=claims["req"]
        )

    async def mark_used(self, token: str, *, session_id: str) -> None:
        digest = token_digest(token)
        if self._reserved.get(digest) == session_id:
            del self._reserved[digest]
            self._spent.add(digest)

    async def release(self, token: str, *, session_id: str) -> None:
        digest = token_digest(token)
        if self._reserved.get(digest) == session_id:
            del self._reserved[digest]


class EmailDomainIdentity:
    """Identity hook: the identity's ``email`` must end in one of ``requirements['domains']``."""

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        email, domains = identity.get("email"), requirements.get("domains")
        if not isinstance(email, str) or not isinstance(domains, list):
            return False
        return any(email.endswith("@" + str(domain)) for domain in domains)


class JsonFileTallies:
    """Database hook: one JSON file per draft tally; a real deployment would create a database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def provision(self, request: ProvisionRequest) -> Provision:
        tally = request.draft_tally()
        path = self.directory / f"{request.tally_id}.json"
        await trio.Path(path).write_text(json.dumps(tally.model_dump(mode="json"), indent=2))
        return Provision(
            tally=tally, database=DatabaseInfo(endpoint=f"file://{path}", credentials_ref="none")
        )

    async def release(self, result: Provision, *, session_id: str) -> None:
        await trio.Path(self.directory / f"{result.tally.tally_id}.json").unlink(missing_ok=True)

    async def accept(self, result: Provision, *, session_id: str) -> bool:
        path = self.directory / f"accepted-{result.tally.tally_id}.json"
        await trio.Path(path).write_text(result.model_dump_json(indent=2))
        return True

    async def commit(self, result: Provision, *, session_id: str) -> None:
        # The session completed: mark the file (provisioned or accepted here) permanent, so a
        # clean-up of stale drafts would keep it. release is never called for it afterwards.
        tally_id = result.tally.tally_id
        for name in (f"{tally_id}.json", f"accepted-{tally_id}.json"):
            path = trio.Path(self.directory / name)
            if await path.exists():
                data = json.loads(await path.read_text())
                data["committed"] = True
                await path.write_text(json.dumps(data, indent=2))
                return
        raise LookupError(f"no draft of tally {tally_id} here")


class PrintingAudit:
    """Audit hook: one line per event. A session hands over its events in batches (written
    before each frame it sends and each hook call with a side effect)."""

    async def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        for event in events:
            detail = getattr(event, "to_state", None) or getattr(event, "code", None) or ""
            print(f"  audit {event.side:7} {session_id[:8]} {event.kind:16} {detail}")


async def main() -> None:
    tokens = SignedTokens(secrets.token_bytes(32))
    with tempfile.TemporaryDirectory() as tmp:
        inviter_dir, invitee_dir = Path(tmp, "a"), Path(tmp, "b")
        await trio.Path(inviter_dir).mkdir()
        await trio.Path(invitee_dir).mkdir()
        hooks = SessionHooks(
            token=tokens,
            database=JsonFileTallies(inviter_dir),
            identity=EmailDomainIdentity(),
            audit=PrintingAudit(),
        )
        async with (
            running_host(new_bootstrap_host()) as a,
            running_host(new_bootstrap_host()) as b,
            open_session_manager(a, hooks),
        ):
            link = BootstrapLink(
                responder_addrs=host_multiaddrs(a),
                token=tokens.mint("stock", timedelta(minutes=5), {"domains": ["example.org"]}),
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
                inviter_role="stock",
            )
            result = await initiate_bootstrap(
                link,
                b,
                hooks=InviteeHooks(database=JsonFileTallies(invitee_dir), audit=PrintingAudit()),
                identity={"email": "bob@example.org"},
            )
            print(f"tally {result.tally.tally_id} at {result.database.endpoint}")
            for who, directory in (("inviter", inviter_dir), ("invitee", invitee_dir)):
                names = sorted(p.name for p in await trio.Path(directory).iterdir())
                print(f"{who}'s files: {names}")


if __name__ == "__main__":
    trio.run(main)
