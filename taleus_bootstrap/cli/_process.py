"""The ``serve`` process's own metrics (CPU, memory, file descriptors, start time), as
OpenTelemetry observable instruments named so that Prometheus shows its conventional
``process_*`` series. Read from the standard library and ``/proc`` at each collection; on a
system without ``/proc`` the memory and descriptor gauges are left out."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["PROCESS_METRICS", "observe_process"]

#: name -> (instrument kind, unit, meaning); docs/operations.md lists these.
PROCESS_METRICS: Final[Mapping[str, tuple[str, str, str]]] = {
    "process.cpu": ("counter", "s", "CPU time of the process, user and system."),
    "process.resident_memory": ("gauge", "By", "Resident memory (RSS)."),
    "process.virtual_memory": ("gauge", "By", "Virtual memory size."),
    "process.open_fds": ("gauge", "{fd}", "Open file descriptors."),
    "process.max_fds": ("gauge", "{fd}", "The soft limit on open file descriptors."),
    "process.start_time": ("gauge", "s", "When the process started, in seconds since the epoch."),
}

_PROC: Final = Path("/proc/self")


def cpu_seconds() -> float:
    """User plus system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_bytes() -> tuple[float, float] | None:
    """``(resident, virtual)`` bytes from ``/proc/self/statm`` (None without ``/proc``)."""
    try:
        size, resident = (_PROC / "statm").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    return float(resident) * page, float(size) * page


def open_fds() -> float | None:
    """Open file descriptors (None without ``/proc``)."""
    try:
        return float(len(os.listdir(_PROC / "fd")))
    except OSError:
        return None


def max_fds() -> float:
    """The soft ``RLIMIT_NOFILE``."""
    return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def start_time(fallback: float) -> float:
    """The process's start, in seconds since the epoch: boot time plus the start tick of
    ``/proc/self/stat``; ``fallback`` without ``/proc``."""
    try:
        stat = (_PROC / "stat").read_text()
        ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return fallback
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def observe_process(meter_provider: MeterProvider) -> None:
    """Register the :data:`PROCESS_METRICS` instruments on ``meter_provider``."""
    from opentelemetry.metrics import Observation

    started = start_time(time.time())

    def one(read: Callable[[], float | None]) -> Callable[[CallbackOptions], list[Any]]:
        def callback(_: CallbackOptions) -> list[Any]:
            value = read()
            return [] if value is None else [Observation(value)]

        return callback

    def memory(index: int) -> Callable[[], float | None]:
        return lambda: None if (read := memory_bytes()) is None else read[index]

    meter = meter_provider.get_meter("taleus_bootstrap.process")
    callbacks: dict[str, Callable[[CallbackOptions], Iterable[Observation]]] = {
        "process.cpu": one(cpu_seconds),
        "process.resident_memory": one(memory(0)),
        "process.virtual_memory": one(memory(1)),
        "process.open_fds": one(open_fds),
        "process.max_fds": one(max_fds),
        "process.start_time": one(lambda: started),
    }
    for name, (kind, unit, meaning) in PROCESS_METRICS.items():
        if kind == "counter":
            meter.create_observable_counter(name, [callbacks[name]], unit, meaning)
        else:
            meter.create_observable_gauge(name, [callbacks[name]], unit, meaning)
