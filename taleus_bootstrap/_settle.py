"""The invitee settles an unconfirmed bootstrap by asking the inviter (protocol section 14).

An unconfirmed :class:`~taleus_bootstrap.BootstrapResult` holds its tally *in doubt*: accepted,
neither committed nor released. :func:`settle_unconfirmed` asks the inviter what it recorded,
over streams ``open_stream`` opens, retrying with a doubling backoff while the answer is
``pending`` or the inviter cannot be reached, for at most ``resolve_timeout``; then commits the
tally (``committed``: the result comes back confirmed) or releases it (``released``/``unknown``:
:class:`~taleus_bootstrap.BootstrapReleased`), and audits an ``OutcomeResolved`` event. Still
unsettled, the result comes back unconfirmed and nothing local changed: ask again later.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

import trio

from ._channel import ByteStream
from ._config import InviteeConfig
from ._engine import utc_now
from ._errors import BootstrapReleased, RejectionCode, RemoteProtocolError
from ._events import OutcomeResolved
from ._frames import Provision
from ._hooks import InviteeHooks, batched_audit
from ._invitee import BootstrapResult
from ._resolve import RecordedOutcome, ask_outcome

__all__ = ["StreamOpener", "settle_unconfirmed"]

logger = logging.getLogger("taleus_bootstrap.invitee")

StreamOpener = Callable[[], Awaitable[ByteStream]]
"""Opens a stream to the inviter's resolve handler (``/taleus/bootstrap-resolve/1.0.0``)."""

FIRST_RETRY: Final = 0.25
LAST_RETRY: Final = 5.0


async def settle_unconfirmed(
    result: BootstrapResult,
    open_stream: StreamOpener,
    *,
    hooks: InviteeHooks,
    config: InviteeConfig | None = None,
) -> BootstrapResult:
    """Settle ``result`` with the inviter (see the module docstring); a confirmed result is
    returned as it is."""
    if result.confirmed:
        return result
    config = config or InviteeConfig()
    answer = await _ask_until_settled(result.session_id, open_stream, config)
    if answer is None or answer == "pending":
        logger.warning(
            "session %s: still unconfirmed after %g s of asking the inviter",
            result.session_id,
            config.resolve_timeout,
        )
        return result
    provision = Provision(tally=result.tally, database=result.database)
    kwargs = {"session_id": result.session_id}
    with trio.fail_after(config.provision_timeout):
        if answer == "committed":
            await hooks.database.commit(provision, **kwargs)
        else:
            await hooks.database.release(provision, **kwargs)
    event = OutcomeResolved(
        at=utc_now(), side="invitee", answer=answer, tally_id=result.tally.tally_id
    )
    await batched_audit(hooks.audit).log_events(result.local_session_id, [event])
    if answer == "committed":
        logger.info("session %s: confirmed by the inviter", result.session_id)
        return replace(result, confirmed=True)
    logger.warning("session %s: the inviter did not record it (%s)", result.session_id, answer)
    raise BootstrapReleased(
        f"the inviter answered {answer}: the tally was released", session_id=result.session_id
    )


async def _ask_until_settled(
    session_id: str, open_stream: StreamOpener, config: InviteeConfig
) -> RecordedOutcome | None:
    """The inviter's settled answer, or None if none came within ``resolve_timeout``."""
    delay = FIRST_RETRY
    with trio.move_on_after(config.resolve_timeout):
        while True:
            wait = delay
            try:
                stream = await open_stream()
                answer = await ask_outcome(stream, session_id, config.step_timeout)
            except RemoteProtocolError as exc:
                logger.info("session %s: resolution attempt failed: %s", session_id, exc.detail)
                if exc.code is RejectionCode.RATE_LIMITED:
                    wait = max(delay, 1.0)
            except Exception as exc:  # unreachable, the stream broke: try again
                logger.info("session %s: resolution attempt failed: %s", session_id, exc)
            else:
                if answer != "pending":
                    return answer
            await trio.sleep(wait)
            delay = min(delay * 2, LAST_RETRY)
    return None
