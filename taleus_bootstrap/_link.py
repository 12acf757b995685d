"""The bootstrap link: what a QR code or e-mail carries from the inviter to the invitee.

Text form: ``taleus:bootstrap:`` followed by the base64url (no padding) of the link's compact JSON.
``BootstrapLink.decode(link.encode()) == link`` for every valid link.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Protocol

import multiaddr
from pydantic import AfterValidator, Field, StringConstraints, ValidationError, model_validator

from ._errors import LinkContentError, LinkFormatError
from ._frames import MAX_TOKEN_CHARS, IdentityObject, MultiaddrStr, Role, UtcDatetime, _Model

__all__ = ["LINK_PREFIX", "MAX_LINK_CHARS", "BootstrapLink", "TokenMinter", "mint_link"]

LINK_PREFIX: Final = "taleus:bootstrap:"
MAX_LINK_CHARS: Final = 4096
MAX_RESPONDER_ADDRS: Final = 8
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _check_responder_addr(value: str) -> str:
    addr = multiaddr.Multiaddr(value)
    protocols = [proto.name for proto in addr.protocols()]
    if not protocols or protocols[-1] != "p2p" or protocols.count("p2p") != 1:
        raise ValueError("responder address must end in /p2p/<peer id>")
    return value


ResponderAddr = Annotated[MultiaddrStr, AfterValidator(_check_responder_addr)]


class BootstrapLink(_Model):
    """An invitation: where the inviter listens, the token, its role and the link's expiry."""

    responder_addrs: Annotated[
        list[ResponderAddr], Field(min_length=1, max_length=MAX_RESPONDER_ADDRS)
    ]
    token: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOKEN_CHARS)]
    expires_at: UtcDatetime
    inviter_role: Role
    identity_requirements: IdentityObject | None = None

    @model_validator(mode="after")
    def _one_peer_and_fits_its_text_form(self) -> BootstrapLink:
        peers = {multiaddr.Multiaddr(a).value_for_protocol("p2p") for a in self.responder_addrs}
        if len(peers) != 1:
            raise ValueError("responder_addrs must all name the same peer")
        if len(self.encode()) > MAX_LINK_CHARS:
            raise ValueError(f"the link's text form would exceed {MAX_LINK_CHARS} characters")
        return self

    @property
    def invitee_role(self) -> Role:
        """The role the invitee takes: the other one."""
        return "foil" if self.inviter_role == "stock" else "stock"

    @property
    def inviter_peer_id(self) -> str:
        """The peer id every ``responder_addrs`` entry must end in (that of the first one)."""
        return multiaddr.Multiaddr(self.responder_addrs[0]).value_for_protocol("p2p")  # type: ignore[no-any-return]

    def is_expired(self, now: datetime) -> bool:
        """Whether the link has expired at ``now`` (an aware datetime)."""
        return now >= self.expires_at

    def encode(self) -> str:
        """The compact text form, ``taleus:bootstrap:<base64url>``, fit for a QR code."""
        payload = self.model_dump_json(exclude_none=False).encode()
        return LINK_PREFIX + base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> BootstrapLink:
        """Parse the text form; raises :class:`LinkFormatError` or :class:`LinkContentError`."""
        if not isinstance(text, str):
            raise LinkFormatError("a link must be text")
        text = text.strip()
        if len(text) > MAX_LINK_CHARS:
            raise LinkFormatError(f"link is longer than {MAX_LINK_CHARS} characters")
        if not text.startswith(LINK_PREFIX):
            raise LinkFormatError(f"link must start with {LINK_PREFIX!r}")
        encoded = text[len(LINK_PREFIX) :]
        if not encoded or not _B64URL.match(encoded) or len(encoded) % 4 == 1:
            raise LinkFormatError("link payload is not unpadded base64url")
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError) as exc:
            raise LinkFormatError("link payload is not unpadded base64url") from exc
        try:
            link = cls.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "link"
            raise LinkContentError(f"invalid link: {where}: {first['msg']}") from None
        return link


class TokenMinter(Protocol):
    """A token store that can mint (the reference stores' ``tokens``): what :func:`mint_link`
    needs."""

    def mint(
        self,
        inviter_role: Role,
        *,
        uses: int | None = ...,
        ttl: timedelta | None = ...,
        identity_requirements: Mapping[str, Any] | None = ...,
        max_in_flight: int | None = ...,
        label: str | None = ...,
        token: str | None = ...,
    ) -> str:
        """Create ``token`` (or a new one) and return it."""
        ...


def mint_link(
    tokens: TokenMinter,
    addrs: Sequence[str],
    role: Role,
    *,
    ttl: timedelta,
    uses: int | None = 1,
    identity_requirements: Mapping[str, Any] | None = None,
    max_in_flight: int | None = None,
    label: str | None = None,
) -> BootstrapLink:
    """Mint a token in ``tokens`` and return its link to ``addrs`` (each ending in
    ``/p2p/<peer id>``), expiring with it.

    ``uses=None``: unlimited; ``max_in_flight`` caps the sessions holding a reservation at once.
    The link is built first, so one that cannot be built (pydantic ``ValidationError``: too
    many addresses, a token too long...) mints nothing.
    """
    token = secrets.token_urlsafe(24)
    requirements = dict(identity_requirements) if identity_requirements is not None else None
    link = BootstrapLink(
        responder_addrs=list(addrs),
        token=token,
        expires_at=datetime.now(UTC) + ttl,
        inviter_role=role,
        identity_requirements=requirements,
    )
    tokens.mint(
        role,
        uses=uses,
        ttl=ttl,
        identity_requirements=requirements,
        max_in_flight=max_in_flight,
        label=label,
        token=token,
    )
    return link
