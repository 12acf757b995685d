"""Hook factories for ``serve --hooks tests.served_hooks:...`` (tests/test_serve_hooks.py).

Each leaves a trace of what ``serve`` did with it in ``<data dir>/hooks-trace.txt``, one word
per line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import JsonValue

from taleus_bootstrap import SessionHooks
from taleus_bootstrap.cli import HooksContext


def _trace(context: HooksContext, word: str) -> None:
    with open(context.data_dir / "hooks-trace.txt", "a", encoding="utf-8") as out:
        out.write(word + "\n")


class TracingIdentity:
    """Accepts every identity that has a name, and notes each call."""

    def __init__(self, context: HooksContext) -> None:
        self.context = context

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        _trace(self.context, "identity.validate")
        return "name" in identity


class TracingNode:
    """A served backend: the store's hooks with the identity above, and the store's recovery
    and maintenance, each noted."""

    def __init__(self, context: HooksContext) -> None:
        self.context = context

    def hooks(self) -> SessionHooks:
        hooks: SessionHooks = self.context.store.hooks(identity=TracingIdentity(self.context))
        return hooks

    async def recover(self) -> Any:
        _trace(self.context, "recover")
        return await self.context.store.recover()

    async def run_maintenance(self, interval: float, *, task_status: Any) -> None:
        _trace(self.context, "maintenance")
        await self.context.store.run_maintenance(interval, task_status=task_status)

    def close(self) -> None:
        _trace(self.context, "close")


def node(context: HooksContext) -> TracingNode:
    """A served backend (hooks + recovery + maintenance + close)."""
    _trace(context, f"factory {context.data_dir.name} {context.settings.node.maintenance_interval}")
    return TracingNode(context)


def plain(context: HooksContext) -> SessionHooks:
    """Just hooks: the store's, with the tracing identity hook."""
    return dataclasses.replace(context.store.hooks(), identity=TracingIdentity(context))


def wrong_type(context: HooksContext) -> int:
    return 42


def wrong_hooks(context: HooksContext) -> Any:
    class Bundle:
        def hooks(self) -> str:
            return "not hooks"

    return Bundle()


def exploding(context: HooksContext) -> SessionHooks:
    raise RuntimeError("cannot reach postgresql://bob:hunter2@db.example/x")


NOT_CALLABLE = "a string"


def memory(context: HooksContext) -> Any:
    """The memory backend: state that lives in one process."""
    from taleus_hooks.memory import MemoryBackend

    return MemoryBackend()
