"""``serve --otlp-endpoint``: the endpoint checked at start, export failures reported in one
line per interval, and a shutdown whose last flush is bounded.

The OTLP/HTTP exporters log every retry of every batch (three warnings and an error, each
holding urllib3's whole error text) when the collector is down, and retry for up to 10 s per
batch, also when the process is stopping. Here their log records are taken out of the log
(for good: an export abandoned at exit logs nothing either) and counted: one WARNING line
says that exports fail and why, at most once per reporting interval (the metric export
interval, ``OTEL_METRIC_EXPORT_INTERVAL``, 60 s by default), and one INFO line says when they
work again. Shutting down gives both exporters :data:`FLUSH_BUDGET_S` to send what is left,
then stops their retries.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import SplitResult, urlsplit

import click

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

__all__ = ["FLUSH_BUDGET_S", "ExportReport", "OtlpPipeline", "check_endpoint", "shown_endpoint"]

logger = logging.getLogger("taleus_bootstrap.otlp")

FLUSH_BUDGET_S: Final = 1.0
"""How long stopping ``serve`` waits for the exporters' last batches."""
GIVE_UP_S: Final = 0.5
"""How much longer it waits for an export blocked on the network before it leaves it."""

DEFAULT_INTERVAL_S: Final = 60.0

#: The loggers whose records about failed exports become the report's (not the log's).
QUIETED: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
    "urllib3.connectionpool",
)

_CAUSES: Final = (
    re.compile(r"\[Errno -?\d+\] [^'\"()]+"),  # [Errno 111] Connection refused
    re.compile(r"code: \d+, reason: [^,]+"),  # an HTTP status the collector answered
    re.compile(r"(?:Read|Connect)TimeoutError|timed out"),
)


def check_endpoint(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> str | None:
    """The click callback of ``--otlp-endpoint``: an ``http``/``https`` URL with a host and,
    when given, a valid port (no query or fragment); else a usage error that says so."""
    if value is None:
        return None
    problem = _endpoint_problem(value)
    if problem is not None:
        raise click.BadParameter(
            f"{problem}; expected the collector's OTLP/HTTP base URL, such as "
            "http://localhost:4318",
            ctx=ctx,
            param=param,
        )
    return value.rstrip("/")


def _endpoint_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        return f"{_shown(value)} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{_shown(value)} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{_shown(value)} names no host"
    if port == 0:
        return f"{_shown(value)} has port 0"
    if parts.query or parts.fragment:
        return f"{_shown(value)} has a query or a fragment"
    return None


def shown_endpoint(value: str) -> str:
    """The endpoint without its userinfo (which may hold credentials)."""
    parts = urlsplit(value)
    if "@" not in parts.netloc:
        return value
    host = parts.netloc.rsplit("@", 1)[1]
    return SplitResult(parts.scheme, host, parts.path, parts.query, parts.fragment).geturl()


def _shown(value: str) -> str:
    """The value for an error message: without userinfo, query or fragment (secrets)."""
    try:
        parts = urlsplit(shown_endpoint(value))
        return repr(SplitResult(parts.scheme, parts.netloc, parts.path, "", "").geturl())
    except ValueError:
        return repr(value.split("@")[-1].split("?")[0].split("#")[0])


def report_interval() -> float:
    """The reporting interval: the SDK's metric export interval (``OTEL_METRIC_EXPORT_INTERVAL``
    milliseconds), 60 s by default."""
    try:
        return max(float(os.environ["OTEL_METRIC_EXPORT_INTERVAL"]) / 1000, 0.001)
    except (KeyError, ValueError):
        return DEFAULT_INTERVAL_S


class ExportReport:
    """Counts failed exports and reports them, one WARNING line per interval at most.

    The :data:`QUIETED` loggers' WARNING-and-above records come to :meth:`note` instead of the
    log, for the cause they name. The exporters' wrappers call :meth:`failed` and
    :meth:`succeeded` per batch."""

    def __init__(self, endpoint: str, interval_s: float) -> None:
        self.endpoint, self.interval_s = shown_endpoint(endpoint), interval_s
        self._lock = threading.Lock()
        self._last_report: float | None = None
        self._cause = "unknown error"
        self._unreported: Counter[str] = Counter()  # failed batches by signal, not yet reported
        self.failing = False
        self.closing = False
        """Set once shutting down: what fails then is told by :meth:`close`."""

    def note(self, message: str) -> None:
        """An exporter's (or urllib3's) warning about an export: keep the cause it names."""
        cause = next((m.group(0).strip() for p in _CAUSES if (m := p.search(message))), None)
        with self._lock:
            if cause is not None:
                self._cause = cause
            elif not self.failing:
                self._cause = message[:160]
            self._maybe_report(time.monotonic())

    # -- called by the exporters' wrappers -------------------------------------------------

    def failed(self, signal: str) -> None:
        """One batch of ``signal`` (``spans``, ``metrics``) could not be exported."""
        with self._lock:
            self._unreported[signal] += 1
            self._maybe_report(time.monotonic())

    def succeeded(self, signal: str) -> None:
        """One batch of ``signal`` was exported."""
        with self._lock:
            if not self.failing:
                return
            self.failing = False
            lost = self._lost()
            self._unreported.clear()
        logger.info("OTLP export to %s works again%s", self.endpoint, lost and f" ({lost})")

    def close(self) -> None:
        """At exit: one last line for failures not reported yet."""
        with self._lock:
            lost = self._lost()
            self._unreported.clear()
        if lost:
            logger.warning("OTLP export to %s: %s before exit", self.endpoint, lost)

    def _lost(self) -> str:
        return ", ".join(
            f"{n} {signal} batch{'es' if n != 1 else ''} lost"
            for signal, n in sorted(self._unreported.items())
        )

    def _maybe_report(self, now: float) -> None:
        """(Lock held.) One WARNING line unless one was written less than an interval ago."""
        self.failing = True
        if self.closing:
            return
        if self._last_report is not None and now - self._last_report < self.interval_s:
            return
        self._last_report = now
        lost = self._lost()
        self._unreported.clear()
        logger.warning(
            "OTLP export to %s failing: %s%s (reported at most once per %g s)",
            self.endpoint,
            self._cause,
            f"; {lost}" if lost else "; retrying",
            self.interval_s,
        )


class _Quiet(logging.Filter):
    """The filter on the :data:`QUIETED` loggers: their WARNING-and-above records go to the
    current pipeline's report (after it closed, nowhere: an export abandoned at exit stays
    quiet)."""

    def __init__(self) -> None:
        super().__init__()
        self.report: ExportReport | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if self.report is not None:
            self.report.note(record.getMessage())
        return False


_QUIET: Final = _Quiet()


class _Reported:
    """Wraps an OTLP exporter: reports each batch's outcome; after :meth:`stop`, drops
    batches without trying (the provider shutting down after the flush budget)."""

    def __init__(self, inner: Any, signal: str, report: ExportReport) -> None:
        self._inner, self._signal, self._report = inner, signal, report
        self._stopped = False
        self._stop_lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # _preferred_temporality and the like
        return getattr(self._inner, name)

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if self._stopped:
            self._report.failed(self._signal)
            return _failure(self._inner)
        result = self._inner.export(batch, *args, **kwargs)
        if result.name == "SUCCESS":
            self._report.succeeded(self._signal)
        else:
            self._report.failed(self._signal)
        return result

    def stop(self) -> None:
        """Stop retrying: the exporter's own shutdown interrupts its back-off."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._inner.shutdown()

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        self.stop()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


def _failure(inner: Any) -> Any:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
    from opentelemetry.sdk.trace.export import SpanExportResult

    if isinstance(inner, MetricExporter):
        return MetricExportResult.FAILURE
    return SpanExportResult.FAILURE


class OtlpPipeline:
    """The OTLP metric reader and span processor of one endpoint, and their report."""

    def __init__(self, endpoint: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        self.endpoint = endpoint
        self.report = _QUIET.report = ExportReport(endpoint, report_interval())
        for name in QUIETED:
            logging.getLogger(name).addFilter(_QUIET)  # once: a filter is added once
        metrics = _Reported(OTLPMetricExporter(f"{endpoint}/v1/metrics"), "metrics", self.report)
        spans = _Reported(OTLPSpanExporter(f"{endpoint}/v1/traces"), "spans", self.report)
        self._exporters = (metrics, spans)
        # The SDK's reader and processor take the wrappers for the exporters they wrap.
        metric_exporter: MetricExporter = metrics  # type: ignore[assignment]
        span_exporter: SpanExporter = spans  # type: ignore[assignment]
        self.reader: MetricReader = PeriodicExportingMetricReader(metric_exporter)
        self.processor: SpanProcessor = BatchSpanProcessor(span_exporter)
        logger.info("OTLP on %s", shown_endpoint(endpoint))

    def shutdown(self, meter_provider: MeterProvider, tracer_provider: TracerProvider) -> None:
        """Shut both providers down (their last collection and export) within about
        :data:`FLUSH_BUDGET_S`: past it, the exporters stop retrying and drop what is left;
        an export still blocked on the network :data:`GIVE_UP_S` later is abandoned (its
        daemon thread ends with the process)."""
        flushes = [
            threading.Thread(target=stop, name=f"otlp-{name}-flush", daemon=True)
            for name, stop in (("spans", tracer_provider.shutdown),
                               ("metrics", meter_provider.shutdown))
        ]  # fmt: skip
        deadline = time.monotonic() + FLUSH_BUDGET_S
        for thread in flushes:
            thread.start()
        for thread in flushes:
            thread.join(max(deadline - time.monotonic(), 0))
        self.report.closing = True
        for exporter in self._exporters:
            exporter.stop()
        for thread in flushes:
            thread.join(max(deadline + GIVE_UP_S - time.monotonic(), 0))
        self.report.close()
