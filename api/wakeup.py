"""The API's nudge to idle workers: one UDP datagram per worker after each submit."""

import contextlib
import logging
import socket

logger = logging.getLogger(__name__)


class WorkerWakeup:
    """Pings the worker processes' UDP ports (WOS_WAKE_PORTS, set by start_service.py) after a
    submit, so an idle worker starts the execution at once instead of at its next poll.
    Without ports it does nothing (the workers poll)."""

    def __init__(self, ports: str | None) -> None:
        self.ports = [int(p) for p in (ports or "").split(",") if p.strip()]
        self.sock: socket.socket | None = None
        if self.ports:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setblocking(False)

    def __call__(self) -> None:
        if self.sock is None:
            return
        for port in self.ports:
            with contextlib.suppress(OSError):  # a worker restarting: it polls anyway
                self.sock.sendto(b"1", ("127.0.0.1", port))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
