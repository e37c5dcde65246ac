"""CPU and RSS, once a second, of every process that takes part in a load run."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psutil

from bench.stack import Stack


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _role(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "gone"
    return "journal_writer" if "_sqlite_writer" in cmd else "orchestrator"


class Sampler:
    """CPU (percent of one core) and RSS per second of every process on the machine
    that takes part: the server's whole tree (its journal writer included), the
    simulator and the load generators."""

    def __init__(self, stack: Stack, loadgens: list[int]) -> None:
        assert stack.server is not None and stack.server.pid is not None and stack.sim is not None
        self.server_pid = stack.server.pid
        self.others = {"simulator": [stack.sim.pid], "loadgen": loadgens}
        self.known: dict[int, tuple[str, psutil.Process]] = {}
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.sample(first=True)

    def _refresh(self) -> None:
        procs: list[tuple[str, psutil.Process]] = []
        try:
            procs += [(_role(p), p) for p in process_tree(self.server_pid)]
        except psutil.Error:
            pass
        for role, pids in self.others.items():
            for pid in pids:
                if pid is not None:
                    try:
                        procs.append((role, psutil.Process(pid)))
                    except psutil.Error:
                        pass
        for role, proc in procs:
            if proc.pid not in self.known:
                proc.cpu_percent()
                self.known[proc.pid] = (role, proc)

    def sample(self, first: bool = False) -> None:
        self._refresh()
        if first:
            return
        cpu: Counter[str] = Counter()
        rss: Counter[str] = Counter()
        for pid, (role, proc) in list(self.known.items()):
            try:
                cpu[role] += proc.cpu_percent()
                rss[role] += proc.memory_info().rss / 2**20
            except psutil.Error:
                del self.known[pid]
        server = cpu["orchestrator"] + cpu["journal_writer"]
        self.samples.append({"t": round(time.monotonic() - self.t0, 1), "cpu_percent": round(server, 1),
                             "rss_mb": round(rss["orchestrator"] + rss["journal_writer"], 1),
                             "cpu": {k: round(v, 1) for k, v in cpu.items()},
                             "rss": {k: round(v, 1) for k, v in rss.items()}})
