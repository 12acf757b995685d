"""The rules both sides apply to what hooks return and to provisions, and the ids they make.

Sans-I/O. A hook whose result a validator refuses fails its session with the hook's failure
code (see :meth:`~taleus_bootstrap._protocol.SessionProtocol._call`).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from ._actions import HookFailure
from ._errors import RejectionCode, RemoteProtocolError
from ._frames import Provision, Tally
from ._hooks import ProvisionRequest

__all__ = [
    "check_provision_matches",
    "check_received_tally",
    "expect_bool",
    "expect_exactly_none",
    "expect_provision",
    "ignore_result",
    "new_session_id",
    "new_tally_id",
    "stock_provision_request",
]


def new_session_id() -> str:
    """A fresh random session id (22 url-safe characters)."""
    return secrets.token_urlsafe(16)


def new_tally_id() -> str:
    """A fresh random tally id (``tly_`` and 22 url-safe characters)."""
    return "tly_" + secrets.token_urlsafe(16)


def stock_provision_request(
    session_id: str, stock_party_id: str, foil_party_id: str, created_at: datetime
) -> ProvisionRequest:
    """What the stock party asks its database hook for: a new draft tally."""
    return ProvisionRequest(
        session_id=session_id,
        tally_id=new_tally_id(),
        provisioner_role="stock",
        stock_party_id=stock_party_id,
        foil_party_id=foil_party_id,
        created_at=created_at,
    )


def expect_bool(value: Any) -> bool:
    """A hook that must return exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {type(value).__name__}")
    return value


def ignore_result(value: Any) -> None:
    """A hook whose result is not checked (``token.mark_used``, the audit hook)."""
    return None


def expect_exactly_none(value: Any) -> None:
    """A hook that must return ``None`` (``database.commit``)."""
    if value is not None:
        raise TypeError(f"expected None, got {type(value).__name__}")


def expect_provision(value: Any) -> Provision:
    """``database.provision``: a ``Provision`` (or what validates as one)."""
    return value if isinstance(value, Provision) else Provision.model_validate(value)


def check_received_tally(tally: Tally, *, stock_party_id: str, foil_party_id: str) -> None:
    """The tally the other party provisioned must be a stock provision naming both parties."""
    if (tally.provisioner_role, tally.stock_party_id, tally.foil_party_id) != (
        "stock",
        stock_party_id,
        foil_party_id,
    ):
        raise RemoteProtocolError(
            RejectionCode.MALFORMED, "provisioned tally names the wrong parties"
        )


def check_provision_matches(request: ProvisionRequest, result: Provision) -> None:
    """A provision whose tally is not the one requested is the hook's failure."""
    tally = result.tally
    if (tally.tally_id, tally.provisioner_role, tally.stock_party_id, tally.foil_party_id) != (
        request.tally_id,
        request.provisioner_role,
        request.stock_party_id,
        request.foil_party_id,
    ):
        raise HookFailure(
            RejectionCode.PROVISION_FAILED,
            "database.provision",
            ValueError("provisioned tally does not match the request"),
        )
