"""The simulated providers' partial refunds (``world.ProviderClient.issue_refund``): under
each seed's faults, what the client is told agrees with the provider's ledger, so a driver
that refunds part of a payment is judged against an honest provider."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from loop import VirtualLoop  # noqa: E402
from run import _stop  # noqa: E402
from world import Payment, Provider, ProviderClient, World  # noqa: E402

from channels import RefundOutcome, RefundRequest, RefundResult  # noqa: E402

R = RefundOutcome
SEEDS = range(200)


class _Proc:
    """What a ProviderClient needs of its process: the world, and never a pause."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def stalled(self) -> None:
        return None


def _disagreements(provider: Provider, request: RefundRequest, res: RefundResult, existed: bool) -> list[str]:
    """What the answer to ``request`` claims that the provider's ledger, right after it,
    denies (``existed``: the refund_reference was known before the call)."""
    held = provider.refunds.get(request.refund_reference)
    ours = held is not None and (held.reference, held.amount_minor) == (request.reference, request.amount_minor)
    said = f"{request.refund_reference}: told {res.outcome} ({res.code}), the provider holds {held}"
    if res.outcome in (R.REFUNDED, R.PENDING) and not ours:
        return [said]
    if res.outcome is R.REFUNDED and held is not None and held.status != "refunded":
        return [said]
    if res.outcome is R.FAILED and res.code is None and not (ours and held is not None and held.status == "failed"):
        return [said]
    if res.code == "refund_reference_reused" and (held is None or ours):
        return [said]
    if res.code not in (None, "refund_reference_reused") and (existed or held is not None):
        return [said]  # a refusal of the payment's state records nothing
    return []


async def _exercise(world: World) -> tuple[list[str], set[str]]:
    rng = world.rng
    world.lax_refunds = False  # the honest provider; a broken one is there to test the orchestrator
    name = sorted(world.providers)[0]
    provider = world.providers[name]
    client = ProviderClient(_Proc(world), world._config(name))  # type: ignore[arg-type]
    provider.payments["r1"] = Payment("r1", "captured", 1000, "CNY", "pr_1", history=["captured"], at=-1e9)
    provider.payments["d1"] = Payment("d1", "declined", 1000, "CNY", "pr_2", history=["declined"], at=-1e9)
    asked: dict[str, set[tuple[str, int]]] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for _ in range(12):
        request = RefundRequest(rng.choice(("r1", "r1", "r1", "d1", "zz")), f"rf{rng.randint(0, 5)}",
                                rng.choice((100, 250, 400)))
        asked.setdefault(request.refund_reference, set()).add((request.reference, request.amount_minor))
        for _ in range(4):  # asked again under the same refund_reference while unknown
            existed = request.refund_reference in provider.refunds
            res = await client.issue_refund(request)
            seen.add(res.code or res.outcome.value)
            problems += _disagreements(provider, request, res, existed)
            if res.outcome is not R.UNKNOWN:
                break
        await asyncio.sleep(rng.uniform(0, 5))
    world.healed = True
    await asyncio.sleep(60)  # every pending refund settles
    p = provider.payments["r1"]
    landed = sum(r.amount_minor for r in p.refunds if r.status == "refunded")
    if landed != p.refunded_minor or p.refunded_minor > p.amount_minor:
        problems.append(f"r1 has {p.refunded_minor} of {p.amount_minor} refunded, its refunds say {landed}")
    if (p.status == "refunded") != (p.refunded_minor == p.amount_minor):
        problems.append(f"r1 is {p.status} with {p.refunded_minor} refunded")
    for ref, held in provider.refunds.items():
        if held.status == "pending" or (held.reference, held.amount_minor) not in asked.get(ref, set()):
            problems.append(f"{ref}: the provider holds {held}")
    return problems, seen


def test_what_a_client_is_told_agrees_with_the_providers_ledger():
    failures: dict[int, list[str]] = {}
    seen: set[str] = set()
    for seed in SEEDS:
        loop = VirtualLoop()
        try:
            problems, seen_here = loop.run_until_complete(_exercise(World(seed, loop)))
            _stop(loop)
        finally:
            loop.close()
        seen |= seen_here
        if problems:
            failures[seed] = problems
    assert not failures, failures
    # The seeds went through every answer (else they prove little).
    assert seen >= {"refunded", "pending", "failed", "unknown", "refund_exceeds_amount", "refund_reference_reused",
                    "not_captured", "already_refunded"}, seen
