"""Dying on purpose (SIGKILL, no clean-up) at a hook call: the kill matrices' node scripts
(``tests/kill_inviter.py``, ``tests/kill_invitee.py``)."""

from __future__ import annotations

import os
import signal
from typing import Any


def die() -> None:
    """SIGKILL this process: nothing after it runs, no clean-up, as a crash."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt:
    """``inner``, dying before ``method`` is called (``when="before"``) or once it returned."""

    def __init__(self, inner: Any, method: str, when: str) -> None:
        self._inner, self._method, self._when = inner, method, when

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._when == "before":
                die()
            result = await attribute(*args, **kwargs)
            die()
            return result

        return call
