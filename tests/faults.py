"""Fault injection for the hook tests: a hook wrapper whose chosen method misbehaves."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio


class InjectedFault(RuntimeError):
    """The exception an injected ``raise`` fault raises."""


class Faulty:
    """Wraps a hook object; its method ``method`` raises, hangs, or returns ``invalid``
    (``mode="any"``: one of these, drawn per call).

    ``when(args, kwargs)`` limits the fault to some calls (default: every call); the other
    calls, and every other method, go to the wrapped hook.
    """

    def __init__(
        self,
        inner: Any,
        method: str,
        mode: str,
        *,
        invalid: Any = "not what the contract asks for",
        when: Callable[[tuple[Any, ...], dict[str, Any]], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if mode not in ("raise", "hang", "invalid", "any"):
            raise ValueError(mode)
        self._inner, self._method, self._mode = inner, method, mode
        self._invalid, self._when = invalid, when
        self._rng = rng or random.Random(0)  # mode "any": one of the three, drawn per call
        self.faults: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        async def faulty(*args: Any, **kwargs: Any) -> Any:
            if self._when is not None and not self._when(args, kwargs):
                return await attr(*args, **kwargs)
            mode = self._mode
            if mode == "any":
                mode = self._rng.choice(["raise", "hang", "invalid"])
            self.faults[mode] += 1
            if mode == "raise":
                raise InjectedFault(f"injected fault in {name}")
            if mode == "hang":
                await trio.sleep_forever()
            return self._invalid

        return faulty
