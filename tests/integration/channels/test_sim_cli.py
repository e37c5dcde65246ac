"""``python -m channels.simulator``: serves the example config until SIGTERM, and refuses
a bad config with the path of the bad key and exit status 1."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from loopback import closed_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline and proc.poll() is None:
            try:
                async with session.get(url + "/_sim/stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"simulator did not start (exit {proc.poll()})")


async def test_the_module_serves_the_example_config_and_stops_on_sigterm():
    port = closed_port()
    proc = subprocess.Popen([sys.executable, "-m", "channels.simulator", "--config",
                             "config/simulator.example.yaml", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url, proc)
        async with aiohttp.ClientSession() as session, session.get(url + "/gcash_direct/ping") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert f"listening on http://127.0.0.1:{port} (8 channels)" in out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_config_exits_1_naming_the_key(tmp_path):
    bad = tmp_path / "sim.yaml"
    bad.write_text("channels:\n  - {name: a, kind: bank, webhook_secret: whsec_aaaa, behaviour: {pending_rate: 2}}\n")
    done = subprocess.run([sys.executable, "-m", "channels.simulator", "--config", str(bad)],
                          cwd=ROOT, capture_output=True, timeout=30)
    assert done.returncode == 1
    assert "channels[0].behaviour.pending_rate: must be a number from 0 to 1" in done.stderr.decode()
