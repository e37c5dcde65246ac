"""Loopback helpers for the channel tests beside the simulator (tests/simharness.py): a
webhook receiver, a port nothing listens on, and the payment request the tests send."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from aiohttp import web

from channels import PaymentRequest


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def req(reference: str, *, amount: int = 8500, currency: str = "CNY", callback_url: str | None = None
        ) -> PaymentRequest:
    return PaymentRequest(reference, amount, currency, "ewallet", {"token": "tok_1"}, callback_url)


@dataclass
class Delivery:
    signature: str | None
    body: bytes


@dataclass
class Receiver:
    """Stands in for the orchestrator's webhook endpoint: records every delivery and
    answers with the next scripted status (200 once the script runs out)."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.deliveries.append(Delivery(request.headers.get("X-Provider-Signature"), body))
            self.arrived.notify_all()
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[Delivery]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.deliveries) >= count), timeout)
        return list(self.deliveries)
