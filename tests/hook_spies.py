"""A database hook that records every call it forwards, and whose ``commit`` can misbehave."""

from __future__ import annotations

from typing import Any

import trio

from taleus_bootstrap import ProvisionRequest, ProvisionResult

COMMIT_FAILURES = ("raise", "hang", "garbage")


class DatabaseSpy:
    """Wraps a database hook: records each call as ``(method, tally_id, session_id)``.

    ``commit_mode`` makes ``commit`` raise, hang, or return garbage (after forwarding) instead of
    just forwarding.
    """

    def __init__(self, inner: Any, commit_mode: str | None = None) -> None:
        assert commit_mode in (None, *COMMIT_FAILURES)
        self.inner = inner
        self.commit_mode = commit_mode
        self.calls: list[tuple[str, str, str]] = []

    def of(self, method: str) -> list[tuple[str, str]]:
        """``(tally_id, session_id)`` of each call of ``method``, in order."""
        return [(tally, sid) for name, tally, sid in self.calls if name == method]

    def methods(self) -> list[str]:
        """The methods called, in order."""
        return [name for name, _, _ in self.calls]

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        self.calls.append(("provision", request.tally_id, request.session_id))
        result: ProvisionResult = await self.inner.provision(request)
        return result

    async def accept(self, result: ProvisionResult, *, session_id: str) -> bool:
        self.calls.append(("accept", result.tally.tally_id, session_id))
        verdict: bool = await self.inner.accept(result, session_id=session_id)
        return verdict

    async def release(self, result: ProvisionResult, *, session_id: str) -> None:
        self.calls.append(("release", result.tally.tally_id, session_id))
        await self.inner.release(result, session_id=session_id)

    async def commit(self, result: ProvisionResult, *, session_id: str) -> Any:
        self.calls.append(("commit", result.tally.tally_id, session_id))
        if self.commit_mode == "raise":
            raise RuntimeError("commit exploded: password=hunter2")
        if self.commit_mode == "hang":
            await trio.sleep_forever()
        await self.inner.commit(result, session_id=session_id)
        return {"garbage": True} if self.commit_mode == "garbage" else None
