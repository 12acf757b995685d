"""systemd's readiness protocol (``sd_notify``) for a ``Type=notify`` unit, with the standard
library: when ``NOTIFY_SOCKET`` names a Unix datagram socket (a path, or ``@name`` in the
abstract namespace), ``serve`` sends ``READY=1`` once it listens and ``STOPPING=1`` when it
starts draining, each with a ``STATUS=`` line. Without ``NOTIFY_SOCKET`` nothing is sent. A
failure to send is logged once and never stops ``serve``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

logger = logging.getLogger("taleus_bootstrap.cli")


class Notifier:
    """Sends state lines to the service manager named by ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]  # the abstract namespace
        elif address.startswith("/"):
            self.address = address
        elif address:
            logger.warning("NOTIFY_SOCKET=%s: not a Unix socket path; not notifying", address)
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``ready=1`` becomes ``READY=1``); True if sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("cannot notify the service manager (NOTIFY_SOCKET): %s", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with ``STATUS`` and this process's ``MAINPID``."""
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def stopping(self, status: str) -> bool:
        """``STOPPING=1`` with ``STATUS``."""
        return self.send(stopping=1, status=status)
