"""Plot docs/performance.png from the loadtest JSON files in docs/perf/.

    python docs/plot_performance.py

Reads ``docs/perf/lt-mem-c<C>.json`` (written by ``taleus-bootstrap loadtest --spawn --baseline
--concurrency C --json ...``) and plots, against concurrency, the throughput and the p99
latency of the session manager and of the bare-handler baseline. Needs matplotlib (the ``dev``
extra).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCS = Path(__file__).resolve().parent


def main() -> None:
    points = []
    for path in sorted(DOCS.glob("perf/lt-mem-c*.json")):
        match = re.search(r"c(\d+)\.json$", path.name)
        assert match is not None
        runs = json.loads(path.read_text())["runs"]
        points.append((int(match.group(1)), runs["ours"], runs["baseline"]))
    points.sort(key=lambda p: p[0])
    concurrency = [c for c, _, _ in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, index in (("session manager (memory hooks)", 1), ("bare handler baseline", 2)):
        left.plot(concurrency, [p[index]["sessions_per_s"] for p in points], marker="o", label=name)
        right.plot(concurrency, [p[index]["latency_ms"]["p99"] for p in points], marker="o",
                   label=name)  # fmt: skip
    left.set(xlabel="sessions in flight", ylabel="sessions/s", title="Throughput", xscale="log")
    right.set(xlabel="sessions in flight", ylabel="ms", title="p99 latency", xscale="log")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.suptitle("taleus-bootstrap loadtest --spawn, stock role, 2-core machine")
    fig.tight_layout()
    fig.savefig(DOCS / "performance.png", dpi=100)
    print(f"wrote {DOCS / 'performance.png'}")


if __name__ == "__main__":
    main()
