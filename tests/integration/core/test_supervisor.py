"""The supervisor of ``serve --workers N``, without its worker processes: its listening
sockets, its config history, and how it restarts a worker."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from orchestrator.supervisor import listening_sockets


def test_the_workers_sockets_share_one_port():
    socks = listening_sockets("127.0.0.1", 0, 3)
    try:
        assert len({s.getsockname() for s in socks}) == 1
    finally:
        for s in socks:
            s.close()


def test_a_port_another_supervisor_listens_on_is_refused():
    """SO_REUSEPORT would let a second orchestrator (started twice, by the same user) join
    the port silently: two journal writers on one file and the same lease names."""
    first = listening_sockets("127.0.0.1", 0, 2)
    try:
        port = first[0].getsockname()[1]
        with pytest.raises(OSError):
            for s in listening_sockets("127.0.0.1", port, 2):
                s.close()
    finally:
        for s in first:
            s.close()
    again = listening_sockets("127.0.0.1", port, 2)  # once it is gone, a restart binds it
    for s in again:
        s.close()


def test_a_port_a_plain_listener_holds_is_refused():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", blocker.getsockname()[1], 2)
    finally:
        blocker.close()


def _supervisor():
    from config import parse
    from orchestrator.supervisor import Supervisor

    return Supervisor(parse({"routing": {"max_attempts": 3}}, "start"), "unused.yaml", {}, 2, "info")


async def test_the_same_change_twice_is_one_entry_and_rollback_goes_back_before_it():
    """Two SREs putting one config at once on two workers (each saw it as new): a single
    instance answers the second unchanged, so the history must not hold it twice, or a
    rollback would 'roll back' to the config it is on."""
    sup = _supervisor()
    start = sup.history[-1][0]
    changed = {**start, "routing": {**start["routing"], "max_attempts": 2}}
    await sup._carry_out({"kind": "apply", "doc": changed, "source": "api"})
    await sup._carry_out({"kind": "apply", "doc": changed, "source": "api"})
    assert [doc for doc, _, _ in sup.history] == [start, changed]
    await sup._carry_out({"kind": "rollback"})
    assert sup.history[-1][:2] == (start, "rollback")


async def test_a_change_no_worker_could_apply_is_refused_and_no_part_of_the_history():
    """A config every worker failed to apply (a CA file that does not load) is answered as
    refused; a worker restarted later must not be handed it as the running config."""
    from orchestrator.supervisor import _Refused

    sup = _supervisor()
    start = sup.history[-1][0]
    changed = {**start, "routing": {**start["routing"], "max_attempts": 2}}

    async def every_worker_fails(action, timeout_s=30.0):
        return [{"worker": 0, "error": "channels: x cannot be set up: no such file"},
                {"worker": 1, "error": "channels: x cannot be set up: no such file"}]

    sup._broadcast = every_worker_fails  # type: ignore[method-assign]
    with pytest.raises(_Refused, match="cannot be set up"):
        await sup._carry_out({"kind": "apply", "doc": changed, "source": "api"})
    assert [doc for doc, _, _ in sup.history] == [start]


async def test_a_worker_whose_restart_fails_is_tried_again():
    """A fork refused once (EAGAIN, out of memory) must not leave the slot dead for good."""
    from orchestrator.supervisor import _Worker

    class Exited:
        returncode = -9

        async def wait(self) -> int:
            return self.returncode

    sup = _supervisor()
    w = _Worker(0, socket.socket(), proc=Exited(), started_at=time.monotonic(), backoff_s=0.01)  # type: ignore[arg-type]
    tries: list[int] = []

    async def start(worker: _Worker) -> None:
        tries.append(worker.index)
        if len(tries) == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")

    sup._start = start  # type: ignore[method-assign]
    await asyncio.wait_for(sup._watch(w), 5)
    assert tries == [0, 0]
    w.sock.close()
