"""``python -m taleus_bootstrap.loadtest server|client ...``: the processes of a load test
(:mod:`~taleus_bootstrap.loadtest.server`, :mod:`~taleus_bootstrap.loadtest.client`)."""

import sys

from . import client, server

if len(sys.argv) < 2 or sys.argv[1] not in ("server", "client"):
    sys.exit("usage: python -m taleus_bootstrap.loadtest server|client [options]")
(server.main if sys.argv[1] == "server" else client.main)(sys.argv[2:])
