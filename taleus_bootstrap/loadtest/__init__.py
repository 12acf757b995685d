"""The load tester behind ``taleus-bootstrap loadtest``.

* :mod:`~taleus_bootstrap.loadtest.server`: the inviter node under test, in its own process: a
  real :class:`~taleus_bootstrap.SessionManager` on memory, SQLite or PostgreSQL hooks, or the
  bare handler (the same frames with nothing else) that the figures are compared with.
* :mod:`~taleus_bootstrap.loadtest.client`: one client process: N bootstraps, C in flight, from
  P peer ids, every outcome classified.
* :mod:`~taleus_bootstrap.loadtest.runner`: spawns both, reads the server's CPU and memory from
  ``/proc``, sums the figures up (:func:`~taleus_bootstrap.loadtest.runner.spawned_run`,
  :func:`~taleus_bootstrap.loadtest.runner.drive`).
"""

from .runner import LoadTestError, drive, proc_stats, spawned_run, summary

__all__ = ["LoadTestError", "drive", "proc_stats", "spawned_run", "summary"]
