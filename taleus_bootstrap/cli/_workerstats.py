"""``serve --workers``: the supervisor's figures are the workers' added up. Each worker serves
its own ``/status`` and ``/metrics`` on a private port of 127.0.0.1; the supervisor reads them
(:func:`http_get`) and adds them up (:func:`sum_statistics`, :func:`merge_recent`,
:func:`sum_metrics`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "http_get",
    "merge_recent",
    "retired_metrics",
    "retired_statistics",
    "sum_metrics",
    "sum_statistics",
]

FETCH_TIMEOUT_S: Final = 2.0
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
RECENT_SESSIONS: Final = 50
CUMULATIVE_STATISTICS: Final = frozenset(
    {
        "sessions_admitted",
        "sessions_finished",
        "by_state",
        "by_rejection",
        "streams_refused",
        "resolutions_answered",
        "resolutions_refused",
    }
)
"""The ``statistics`` of ``/status`` that only grow (the others are gauges: sessions active,
peers tracked, ...)."""
CUMULATIVE_TYPES: Final = frozenset({"counter", "histogram", "summary"})


async def http_get(url: str) -> tuple[int, bytes]:
    """GET ``url`` (``http://HOST:PORT/PATH``, a worker's endpoint): its status and body.
    Raises ``OSError`` (refused, reset, cut by the 2 s timeout, or a malformed answer)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    data = b""
    with trio.move_on_after(FETCH_TIMEOUT_S) as scope:
        try:
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                request = f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
                await stream.send_all(request.encode("latin-1"))
                while chunk := await stream.receive_some(65536):
                    data += chunk
                    if len(data) > MAX_RESPONSE_BYTES:
                        raise OSError(f"{url}: answer too large")
        except trio.BrokenResourceError as exc:  # reset: the worker died meanwhile
            raise OSError(f"{url}: {exc}") from None
    if scope.cancelled_caught:
        raise OSError(f"{url}: no answer within {FETCH_TIMEOUT_S:g} s")
    head, sep, body = data.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"{url}: not an HTTP answer")
    return int(parts[1]), body


def sum_statistics(documents: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The workers' ``statistics`` added up: counts summed (and counts by key, key by key),
    ``accepting`` true when every worker accepts, a text (``store_breaker``) kept when the
    workers agree and else given as ``{value: workers}``."""
    total: dict[str, Any] = {}
    texts: dict[str, dict[str, int]] = {}
    accepting: list[bool] = []
    for doc in documents:
        for name, value in doc.items():
            if isinstance(value, bool):
                accepting.append(value)
            elif isinstance(value, int | float):
                total[name] = total.get(name, 0) + value
            elif isinstance(value, Mapping):
                into = total.setdefault(name, {})
                for key, count in value.items():
                    into[key] = into.get(key, 0) + count
            else:
                seen = texts.setdefault(name, {})
                seen[str(value)] = seen.get(str(value), 0) + 1
    if accepting:
        total["accepting"] = all(accepting)
    for name, seen in texts.items():
        total[name] = next(iter(seen)) if len(seen) == 1 else seen
    return total


def retired_statistics(statistics: Mapping[str, Any]) -> dict[str, Any]:
    """What a worker that exited keeps adding to the node's ``statistics``: its counts (the
    last the supervisor read), not its gauges. Summed in, the node's counts never go down when
    a worker is restarted and starts from 0."""
    return {name: value for name, value in statistics.items() if name in CUMULATIVE_STATISTICS}


def retired_metrics(text: str) -> str:
    """What a worker that exited keeps adding to the node's ``/metrics``: its counters,
    histograms and summaries (the last page the supervisor read; no ``_created``), not its
    gauges."""
    kept = []
    for family in text_string_to_metric_families(text):
        if family.type not in CUMULATIVE_TYPES:
            continue
        metric = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                metric.add_sample(sample.name, sample.labels, sample.value)
        kept.append(metric)
    return _render(kept).decode()


def merge_recent(by_worker: Mapping[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workers' last finished sessions, each with its ``worker``, newest first."""
    merged = [
        {**session, "worker": index}
        for index, sessions in by_worker.items()
        for session in sessions
    ]
    merged.sort(key=lambda s: str(s.get("started_at", "")), reverse=True)
    return merged[:RECENT_SESSIONS]


def _combine(sample: str, old: float, new: float) -> float:
    """Two workers' values of one sample: added up, but for the times something started or
    was created (the earliest) and ``target_info`` (the same for all)."""
    if sample.endswith("_created") or "start_time" in sample:
        return min(old, new)
    if sample == "target_info":
        return max(old, new)
    return old + new


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def sum_metrics(texts: Iterable[str]) -> bytes:
    """The workers' Prometheus texts as one: each sample (name and labels) added up across
    them (see :func:`_combine`), families in the order first seen."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = into.get(key)
                into[key] = sample.value if old is None else _combine(key[0], old, sample.value)
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return _render(list(families.values()))


def _render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
