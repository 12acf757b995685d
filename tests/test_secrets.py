"""No secret a session knows reaches the audit trail, the logs, ``/status`` or the wire.

Hooks raise exceptions whose messages embed the token (raw, base64, base64url, hex,
URL-quoted, inside a link's text), the passwords a provision carries, a DSN's password and a
``password=`` setting; none of it may come out, while the rest of the message does (scrubbed).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from taleus_hooks.memory import MemoryProvisioner

from taleus_bootstrap import (
    Ack,
    BootstrapError,
    BootstrapLink,
    Contact,
    DatabaseInfo,
    ManagerConfig,
    Provision,
    Provisioned,
    ProvisionRequest,
    Rejected,
    RejectionCode,
    SessionManager,
    Tally,
    run_invitee,
)
from taleus_bootstrap.cli._observe import status_document
from taleus_bootstrap.testing import MemoryByteStream, memory_stream_pair, read_frame, write_frame

from .conftest import INVITEE_PEER, INVITER_PEER, Backend
from .protocol_harness import accepted
from .test_invitee_memory import ADDR
from .test_session_memory import Misbehaving, contact

TOKEN = "tok+Zq9/xW2v=Y7uK4&Lm3Qp8"
DSN_PASSWORD = "Dsn-Pass-55"
SETTING_PASSWORD = "Kv-Pass-33"
ENDPOINT_PASSWORD = "Pv-Pass-99"
REF_PASSWORD = "Ref-Pass-77"
LINK = BootstrapLink(
    responder_addrs=[ADDR],
    token=TOKEN,
    expires_at=datetime.now(UTC) + timedelta(days=1),
    inviter_role="stock",
)


def token_forms(token: str) -> list[str]:
    raw = token.encode()
    return [
        token,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
        quote(token, safe=""),
    ]


def link_text(token: str) -> str:
    return LINK.model_copy(update={"token": token}).encode()


def message(token: str, *, provision: bool) -> str:
    """An exception message embedding every secret the session knows (the provision's
    passwords only where it knows the provision)."""
    parts = [f"token {form!r}" for form in token_forms(token)]
    parts += [
        f"link {link_text(token)}",
        f"dsn postgresql://tally:{DSN_PASSWORD}@db.example/t",
        f"conninfo host=db password={SETTING_PASSWORD} user=t",
    ]
    if provision:
        parts += [f"endpoint secret {ENDPOINT_PASSWORD}", f"ref secret {REF_PASSWORD}"]
    return "hook exploded: " + "; ".join(parts)


def forbidden(token: str, *, provision: bool) -> list[str]:
    values = [*token_forms(token), link_text(token), DSN_PASSWORD, SETTING_PASSWORD]
    return values + ([ENDPOINT_PASSWORD, REF_PASSWORD] if provision else [])


def assert_clean(text: str, token: str, *, provision: bool) -> None:
    for value in forbidden(token, provision=provision):
        assert value not in text
    # A link's text whose base64 was cut where the token began: what is left never decodes to
    # the token (nor to a part of it long enough to matter).
    for run in re.findall(r"taleus:bootstrap:([A-Za-z0-9_-]+)", text):
        decoded = base64.urlsafe_b64decode(run[: len(run) // 4 * 4]).decode("latin-1")
        assert token[:8] not in decoded


class PasswordfulProvisioner(MemoryProvisioner):
    """Endpoints with a password in their userinfo, references with a ``password=``."""

    def __init__(self) -> None:
        super().__init__(endpoint_prefix=f"postgresql://tally:{ENDPOINT_PASSWORD}@db.example/")

    async def provision(self, request: ProvisionRequest) -> Provision:
        result = await super().provision(request)
        ref = f"user=tally password={REF_PASSWORD}"
        database = result.database.model_copy(update={"credentials_ref": ref})
        return result.model_copy(update={"database": database})


def logged(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


def trail(backend: Any) -> str:
    return json.dumps([[sid, e.model_dump(mode="json")] for sid, e in backend.audit.events])


async def read_all(stream: MemoryByteStream) -> bytes:
    received = b""
    while chunk := await stream.read(65536):
        received += chunk
    return received


def every_file(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def peer_provision(session_id: str) -> Provision:
    """The stock invitee's provision, its endpoint and reference carrying passwords."""
    tally = Tally(
        tally_id="tly_secret_" + session_id[:8],
        provisioner_role="stock",
        stock_party_id=INVITEE_PEER,
        foil_party_id=INVITER_PEER,
        created_at=datetime.now(UTC),
    )
    database = DatabaseInfo(
        endpoint=f"postgresql://tally:{ENDPOINT_PASSWORD}@db.example/{tally.tally_id}",
        credentials_ref=f"user=tally password={REF_PASSWORD}",
    )
    return Provision(tally=tally, database=database)


# (role, hook, method, the provision is known, where the message goes)
CASES = [
    ("stock", "token", "validate", False, "rejection"),
    ("stock", "identity", "validate", False, "rejection"),
    ("stock", "database", "provision", False, "rejection"),
    ("stock", "audit", "log_events", False, "rejection"),
    ("stock", "database", "release", True, "log"),
    ("stock", "database", "commit", True, "hook_error"),
    ("stock", "token", "mark_used", True, "hook_error"),
    ("foil", "database", "accept", True, "rejection"),
]


@pytest.mark.parametrize(("role", "hook", "method", "provision", "goes_to"), CASES)
async def test_inviter_hook_exceptions_leak_no_secret(
    autojump_clock: Any,
    nursery: trio.Nursery,
    inviter_backend: Backend,
    caplog: pytest.LogCaptureFixture,
    role: str,
    hook: str,
    method: str,
    provision: bool,
    goes_to: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    text = message(TOKEN, provision=provision)
    parts = {
        "token": inviter_backend.tokens,
        "identity": inviter_backend.identity,
        "database": PasswordfulProvisioner(),
        "audit": inviter_backend.audit,
    }
    parts[hook] = Misbehaving(parts[hook], method, "raise", times=1, message=text)
    manager = SessionManager(
        None, inviter_backend.hooks(**parts), ManagerConfig(), local_peer_id=INVITER_PEER
    )
    await nursery.start(manager.run)
    requirements = {"name": True} if hook == "identity" else None
    inviter_backend.tokens.mint(role, token=TOKEN, identity_requirements=requirements)  # type: ignore[arg-type]
    client, server = memory_stream_pair()
    done = trio.Event()

    async def serve() -> None:
        await manager.handle_stream(server, INVITEE_PEER)
        done.set()

    nursery.start_soon(serve)
    await write_frame(client, contact(TOKEN))
    received = b""
    if goes_to != "rejection" or method == "accept":
        first = await read_frame(client)
        session_id = first.session_id  # type: ignore[union-attr]
        if method == "accept":
            provisioned = Provisioned(session_id=session_id, provision=peer_provision(session_id))
            await write_frame(client, provisioned)
        elif goes_to == "hook_error":
            await write_frame(client, Ack(session_id=session_id))
        else:
            # The invitee refuses: the session fails and releases its provision.
            await write_frame(client, Rejected(code=RejectionCode.MALFORMED, retry_after_s=None))
    received += await read_all(client)
    await done.wait()
    [record] = manager.history()
    status = json.dumps(status_document(manager, []))
    audit = trail(inviter_backend)
    for where in (audit, logged(caplog), received.decode("latin-1"), status):
        assert_clean(where, TOKEN, provision=provision)
    # The message is kept, scrubbed, where it goes (and nothing else is lost).
    if goes_to == "log":
        assert "hook exploded" in logged(caplog) and "[redacted]" in logged(caplog)
    else:
        [event] = [e for _, e in inviter_backend.audit.events if e.kind == goes_to]
        assert event.error_type == "RuntimeError"
        assert (event.error_message or "").startswith("hook exploded: token '[redacted]'")
        assert len(event.error_message or "") <= 500
    assert record.final_state == ("COMPLETED" if goes_to == "hook_error" else "FAILED")


async def test_invitee_hook_exceptions_leak_no_secret(
    autojump_clock: Any,
    nursery: trio.Nursery,
    invitee_backend: Backend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The invitee knows the token and its link's text: its database hook raising with them
    leaks none into its audit trail, its logs, the error its caller gets or the wire."""
    caplog.set_level(logging.DEBUG)
    text = message(TOKEN, provision=False)
    exploding = Misbehaving(invitee_backend.provisioner, "provision", "raise", message=text)
    link = LINK.model_copy(update={"inviter_role": "foil"})  # the invitee provisions
    ours, theirs = memory_stream_pair()
    hooks = invitee_backend.invitee_hooks(database=exploding)
    error: BaseException | None = None
    received = b""
    async with trio.open_nursery() as both:

        async def invitee() -> None:
            nonlocal error
            try:
                await run_invitee(ours, link, hooks=hooks, local_peer_id=INVITEE_PEER,
                                  remote_peer_id=INVITER_PEER, responder_addr=ADDR)  # fmt: skip
            except BootstrapError as exc:
                error = exc

        both.start_soon(invitee)
        assert isinstance(await read_frame(theirs), Contact)
        await write_frame(theirs, accepted(role="foil"))
        received = await read_all(theirs)
    assert isinstance(error, BootstrapError)
    for where in (trail(invitee_backend), logged(caplog), received.decode("latin-1"), str(error)):
        assert_clean(where, TOKEN, provision=False)
    [event] = [e for _, e in invitee_backend.audit.events if e.kind == "rejection"]
    assert (event.error_message or "").startswith("hook exploded: token '[redacted]'")


async def test_sqlite_trail_keeps_no_secret(
    nursery: trio.Nursery,
    tmp_path: Path,
    backend_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the SQLite backend: the token hook raising with every secret leaves none of them in
    the audit trail, nor anywhere in the data directory's files."""
    caplog.set_level(logging.DEBUG)
    backend = backend_factory("sqlite")
    backend.tokens.mint("stock", token=TOKEN)
    text = message(TOKEN, provision=False)
    tokens = Misbehaving(backend.tokens, "validate", "raise", message=text)
    manager = SessionManager(None, backend.hooks(token=tokens), local_peer_id=INVITER_PEER)
    await nursery.start(manager.run)
    client, server = memory_stream_pair()
    async with trio.open_nursery() as inner:
        inner.start_soon(manager.handle_stream, server, INVITEE_PEER)
        await write_frame(client, contact(TOKEN))
        received = await read_all(client)
    [event] = [e for _, e in backend.audit.events if e.kind == "rejection"]
    assert (event.error_message or "").startswith("hook exploded: token '[redacted]'")
    for where in (trail(backend), logged(caplog), received.decode("latin-1")):
        assert_clean(where, TOKEN, provision=False)
    await manager.aclose()
    stored = every_file(tmp_path)
    for value in forbidden(TOKEN, provision=False):  # tokens are stored as digests
        assert value.encode() not in stored


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_serve_logs_scrub_password_shaped_values(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """``serve``'s log handler scrubs DSN passwords and ``password=`` settings from any
    library's records, message and traceback alike."""
    from taleus_bootstrap.cli._observe import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", fmt)
        try:
            raise ConnectionError(f"cannot reach postgresql://u:{DSN_PASSWORD}@h/db")
        except ConnectionError:
            logging.getLogger("psycopg.pool").exception("pool: password=%s", SETTING_PASSWORD)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    err = capsys.readouterr().err
    assert "pool: password=[redacted]" in err and "ConnectionError" in err
    assert DSN_PASSWORD not in err and SETTING_PASSWORD not in err
