"""Shared builders for the pricing tests (unit and integration): the example config, and
configs made to order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config import PricingConfig, load_file, parse

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "orchestrator.example.yaml"


def example_pricing() -> PricingConfig:
    return load_file(EXAMPLE).config.pricing


def pricing(**overrides: Any) -> PricingConfig:
    """A small pricing config (USD base, CNY/JPY/BHD), with ``overrides`` merged in."""
    doc: dict[str, Any] = {"base_currency": "USD", "coins_per_unit": 70,
                           "rates": {"CNY": 0.1404, "JPY": 0.0067, "BHD": 2.6596}}
    doc.update(overrides)
    return parse({"pricing": doc}).config.pricing

