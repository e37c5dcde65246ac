"""serve --tls-cert/--tls-key serves HTTPS only, with a certificate the test makes."""

from __future__ import annotations

import ssl
import subprocess

import aiohttp
import pytest
from procs import FRONT_KEY, orchestrator, orchestrator_doc, simulator

pytestmark = pytest.mark.slow

CHANNELS = [{"name": "tls_direct", "kind": "direct_api", "webhook_secret": "whsec_tls_e2e",
             "behaviour": {"latency_ms": 2, "latency_jitter_ms": 0, "ping_latency_ms": 0}}]


def make_cert(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


async def test_https_only_with_the_given_certificate(tmp_path):
    cert, key = make_cert(tmp_path)
    sim = simulator(tmp_path, {"seed": 1, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS)
        orch = orchestrator(tmp_path, doc)
        orch.args += ["--tls-cert", cert, "--tls-key", key]
        orch.url = orch.url.replace("http://", "https://")
        orch.start()
        await orch.wait_ready()
        trusted = ssl.create_default_context(cafile=cert)
        body = {"user_id": "u1", "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
                "instrument": {"token": "tok"}}
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": "tls-1"}
        async with aiohttp.ClientSession() as s:
            async with s.post(orch.url + "/v1/recharges", json=body, headers=headers, ssl=trusted) as r:
                rec = await r.json()
                assert r.status == 201 and rec["status"] == "succeeded", rec
            with pytest.raises(aiohttp.ClientSSLError):  # an unknown CA is refused by a verifying client
                async with s.get(orch.url + "/healthz", ssl=ssl.create_default_context()):
                    pass
            with pytest.raises(aiohttp.ClientError):  # plain HTTP gets no answer
                async with s.get(orch.url.replace("https://", "http://") + "/healthz"):
                    pass
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
