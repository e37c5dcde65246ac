"""Unit tests start no process and no server: anything that would fails the test, so such
a test goes to tests/integration (where real processes and servers are the point)."""

from __future__ import annotations

import asyncio
import multiprocessing.process
import os
import socket
import subprocess
from typing import Any

import pytest


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a unit test may not {what}: move the test to tests/integration")

    return refused


@pytest.fixture(autouse=True)
def _no_processes_or_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process (subprocess)"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("start a process (multiprocessing)"))
    monkeypatch.setattr(os, "fork", _refuse("fork"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("spawn a process"))
    monkeypatch.setattr(socket.socket, "listen", _refuse("listen on a socket"))
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_server", _refuse("start a server"))
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "subprocess_exec", _refuse("start a process"))
