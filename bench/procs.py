"""Process-group accounting from /proc (Linux): summed RSS sampled every 100 ms, CPU per process.

The service runs in its own process group (supervisor, API, worker(s), Prefect server), so
"every process of the service" is "every process whose pgrp is the supervisor's pid".
"""

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Self

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(pgrp, cpu seconds) of a pid, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0]=state, [1]=ppid, [2]=pgrp, ..., [11]=utime, [12]=stime
    return int(rest[2]), (int(rest[11]) + int(rest[12])) / TICK


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role(pid: int) -> str:
    """A short name for a service process, from its command line."""
    cmd = cmdline(pid)
    for needle, name in (
        ("flows.prefect_server", "prefect-server"),
        ("flows.worker", "worker"),
        ("api_service:app", "api"),
        ("naive_prefect:app", "naive-api"),
        ("start_service.py", "supervisor"),
        ("bench.baselines", "baseline"),
        ("py-spy", "py-spy"),
    ):
        if needle in cmd:
            return name
    return cmd.split(" ")[0].rsplit("/", 1)[-1] or str(pid)


def group_pids(pgids: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st[0] in pgids:
            pids.append(int(entry))
    return pids


def cpu_by_role(pgids: set[int]) -> dict[str, float]:
    """Cumulative CPU seconds per role (several workers add up) of the live processes."""
    out: dict[str, float] = {}
    for pid in group_pids(pgids):
        st = _stat(pid)
        if st is not None:
            name = role(pid)
            out[name] = out.get(name, 0.0) + st[1]
    return out


def pids_by_role(pgids: set[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pid in group_pids(pgids):
        out.setdefault(role(pid), []).append(pid)
    return out


@dataclass
class MemSampler:
    """Samples the summed RSS of the process groups every `interval` s in a thread.

    `reset()` starts a new window; `peak` is the highest sum seen since (bytes)."""

    pgids: set[int]
    interval: float = 0.1
    peak: int = 0
    peak_by_role: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pids: list[int] = field(default_factory=list)
    _refreshed: float = 0.0

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name="bench-mem", daemon=True)
        self._thread.start()
        return self

    def reset(self) -> None:
        self.peak, self.peak_by_role = 0, {}
        self._refreshed = 0.0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        now = time.monotonic()
        if now - self._refreshed > 1.0:  # new processes (worker restarts) within a second
            self._pids = group_pids(self.pgids)
            self._refreshed = now
        sizes = {pid: _rss(pid) for pid in self._pids}
        total = sum(sizes.values())
        if total > self.peak:
            self.peak = total
            by_role: dict[str, int] = {}
            for pid, size in sizes.items():
                by_role[role(pid)] = by_role.get(role(pid), 0) + size
            self.peak_by_role = by_role
        return total

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
