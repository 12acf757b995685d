"""Wire frames of ``/taleus/bootstrap/2.0.0`` as frozen pydantic models.

Every bound of PROTOCOL.md is a constant here and a constraint on a field. Unknown fields,
missing fields, wrong types, NaN/infinity and out-of-bound values all fail validation, which the
codec turns into ``malformed``. Sans-I/O: nothing here touches trio, libp2p or a clock.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import multiaddr
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    Strict,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from ._errors import RejectionCode

__all__ = [
    "MAX_CADRE_ADDRS",
    "MAX_IDENTITY_BYTES",
    "MAX_IDENTITY_DEPTH",
    "MAX_TOKEN_CHARS",
    "Ack",
    "Accepted",
    "Contact",
    "DatabaseInfo",
    "Frame",
    "IdentityObject",
    "FRAME_ADAPTER",
    "PeerIdStr",
    "Provision",
    "Provisioned",
    "Rejected",
    "Role",
    "SessionIdStr",
    "Tally",
    "UtcDatetime",
    "format_utc",
]

MAX_TOKEN_CHARS: Final = 512
MAX_IDENTITY_BYTES: Final = 8 * 1024
MAX_IDENTITY_DEPTH: Final = 16
MAX_CADRE_ADDRS: Final = 16
MAX_MULTIADDR_CHARS: Final = 512
MAX_PEER_ID_CHARS: Final = 128
MAX_TALLY_ID_CHARS: Final = 128
MAX_ENDPOINT_CHARS: Final = 1024
MAX_CREDENTIALS_REF_CHARS: Final = 256
MAX_RETRY_AFTER_S: Final = 86_400.0

Role = Literal["stock", "foil"]

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
PeerIdStr = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PEER_ID_CHARS, pattern=f"^[{_BASE58}]+$"),
]
"""A libp2p peer id in its base58 text form."""

SessionIdStr = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
TokenStr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOKEN_CHARS)]


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def format_utc(value: datetime) -> str:
    """RFC 3339 text of an aware UTC datetime, ``Z`` suffix, microseconds only when non-zero."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:  # already what is wanted (every timestamp this package makes)
        return value
    offset = value.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError("timestamp must be RFC 3339 in UTC (Z or +00:00)")
    return value.astimezone(UTC)


def _rfc3339_text_only(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.match(value):
        return value
    raise ValueError("must be an RFC 3339 timestamp string")


UtcDatetime = Annotated[
    datetime,
    Strict(False),
    BeforeValidator(_rfc3339_text_only),
    AfterValidator(_require_utc),
    PlainSerializer(format_utc, return_type=str, when_used="always"),
]
"""An aware UTC timestamp, serialized as RFC 3339 with ``Z``."""


def _check_multiaddr(value: str) -> str:
    try:
        multiaddr.Multiaddr(value)
    except Exception as exc:  # multiaddr raises several unrelated exception types
        raise ValueError("not a valid multiaddr") from exc
    return value


MultiaddrStr = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_MULTIADDR_CHARS),
    AfterValidator(_check_multiaddr),
]


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping early once ``limit`` is exceeded."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def _check_identity(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if _depth(value, MAX_IDENTITY_DEPTH) > MAX_IDENTITY_DEPTH:
        raise ValueError(f"identity nests deeper than {MAX_IDENTITY_DEPTH} levels")
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("identity holds NaN or infinity, which JSON does not allow") from None
    size = len(text.encode())
    if size > MAX_IDENTITY_BYTES:
        raise ValueError(f"identity is {size} bytes serialized, over {MAX_IDENTITY_BYTES}")
    return value


IdentityObject = Annotated[dict[str, JsonValue], AfterValidator(_check_identity)]
"""A JSON object of at most MAX_IDENTITY_BYTES serialized and MAX_IDENTITY_DEPTH levels, finite."""


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, str_max_length=64 * 1024
    )


class Tally(_Model):
    """The minimal draft tally both parties agree on."""

    tally_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TALLY_ID_CHARS)]
    provisioner_role: Role
    stock_party_id: PeerIdStr
    foil_party_id: PeerIdStr
    created_at: UtcDatetime


class DatabaseInfo(_Model):
    """Where the shared database is: an endpoint and the *name* of a credential, never a secret."""

    endpoint: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ENDPOINT_CHARS)]
    credentials_ref: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_CREDENTIALS_REF_CHARS)
    ]


class Provision(_Model):
    """The ``PROVISION`` object: the shared database and the draft tally it holds."""

    tally: Tally
    database: DatabaseInfo


class Contact(_Model):
    """B→A, first frame: the token, B's claimed peer id, identity and cadre addresses."""

    type: Literal["contact"] = "contact"
    token: TokenStr
    party_id: PeerIdStr
    identity: IdentityObject
    cadre_addrs: Annotated[list[MultiaddrStr], Field(max_length=MAX_CADRE_ADDRS)]


class Accepted(_Model):
    """A→B: the session id, A's role, identity and cadre, and (stock only) the provision."""

    type: Literal["accepted"] = "accepted"
    session_id: SessionIdStr
    inviter_role: Role
    party_id: PeerIdStr
    cadre_addrs: Annotated[list[MultiaddrStr], Field(max_length=MAX_CADRE_ADDRS)]
    provision: Provision | None

    @model_validator(mode="after")
    def _provision_iff_stock(self) -> Accepted:
        if (self.provision is not None) != (self.inviter_role == "stock"):
            raise ValueError("provision must be present exactly when inviter_role is stock")
        return self


class Provisioned(_Model):
    """B→A (foil only): the provision B made."""

    type: Literal["provisioned"] = "provisioned"
    session_id: SessionIdStr
    provision: Provision


class Ack(_Model):
    """Sent by the party that received the provision; marks the session complete."""

    type: Literal["ack"] = "ack"
    session_id: SessionIdStr


class Rejected(_Model):
    """Either direction; always the last frame its sender writes."""

    type: Literal["rejected"] = "rejected"
    code: RejectionCode
    retry_after_s: Annotated[float, Field(ge=0, le=MAX_RETRY_AFTER_S)] | None


Frame = Annotated[Contact | Accepted | Provisioned | Ack | Rejected, Field(discriminator="type")]
"""Any frame, discriminated on its ``type`` field."""

FRAME_ADAPTER: Final[TypeAdapter[Contact | Accepted | Provisioned | Ack | Rejected]] = TypeAdapter(
    Frame
)
