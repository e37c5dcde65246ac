"""The risk model as served: a logistic regression over ``risk_features.FEATURES``.

It is trained offline (``bench/risk_train.py``, scikit-learn) and kept as a versioned JSON
artefact under ``orchestrator/risk_models/``. Serving needs no library: the score is
sigmoid(b + sum(w_i * (x_i - mean_i) / scale_i)), about fifty multiply-adds, and the same
terms explain it: each feature's contribution to the log-odds, the largest first.

``load(ref)`` takes an artefact's name (``risk-lr-v1``: a file in ``risk_models/``) or a path
to a ``.json`` file, and refuses (``ModelError``) an artefact that does not fit: another
format, features other than this build computes, or numbers missing or not finite.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from orchestrator.risk_features import FEATURES

__all__ = ["MODELS_DIR", "Contribution", "ModelError", "RiskModel", "load"]

MODELS_DIR = Path(__file__).with_name("risk_models")
FORMAT = "logistic-v1"


class ModelError(ValueError):
    """A risk model artefact that cannot be served; the message says why."""


@dataclass(frozen=True, slots=True)
class Contribution:
    feature: str
    value: float
    log_odds: float  # what it adds to the score's log-odds (negative: towards good)

    def to_api(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": round(self.value, 4), "contribution": round(self.log_odds, 4)}


@dataclass(frozen=True, slots=True)
class RiskModel:
    version: str
    weights: tuple[float, ...]  # w_i / scale_i, in FEATURES order
    centre: tuple[float, ...]  # mean_i
    bias: float  # b - sum(w_i * mean_i / scale_i)
    trained: dict[str, Any]  # what it was trained on, as the artefact says

    def log_odds(self, x: list[float]) -> float:
        z = self.bias
        for w, v in zip(self.weights, x, strict=True):
            z += w * v
        return z

    def score(self, x: list[float]) -> float:
        """P(fraud) for the feature vector ``x``."""
        z = self.log_odds(x)
        return 1.0 / (1.0 + math.exp(-z)) if z > -500 else 0.0

    def explain(self, x: list[float], top: int = 5) -> list[Contribution]:
        """The features that moved this score most from the average recharge's, either way."""
        terms = [abs(w * (v - c)) for v, w, c in zip(x, self.weights, self.centre, strict=True)]
        most = heapq.nlargest(top, range(len(terms)), key=terms.__getitem__)
        return [Contribution(FEATURES[i], x[i], self.weights[i] * (x[i] - self.centre[i])) for i in most]


def load(ref: str) -> RiskModel:
    path = Path(ref) if ref.endswith(".json") or "/" in ref else MODELS_DIR / f"{ref}.json"
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"no risk model artefact at {path}") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelError(f"risk model artefact {path} cannot be read: {exc}") from None
    return from_document(doc, str(path))


def from_document(doc: Any, where: str = "the artefact") -> RiskModel:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{where}: not a {FORMAT} risk model")
    names = doc.get("features")
    if names != list(FEATURES):
        missing = sorted(set(FEATURES) - set(names or ()))
        extra = sorted(set(names or ()) - set(FEATURES))
        raise ModelError(f"{where}: its features are not the ones this build computes "
                         f"(missing {missing or 'none'}, unknown {extra or 'none'}, or another order)")
    try:
        coef = [float(v) for v in doc["coef"]]
        mean = [float(v) for v in doc["mean"]]
        scale = [float(v) for v in doc["scale"]]
        intercept = float(doc["intercept"])
        version = str(doc["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: missing or malformed field ({exc})") from None
    n = len(FEATURES)
    if not (len(coef) == len(mean) == len(scale) == n):
        raise ModelError(f"{where}: coef, mean and scale must each hold {n} numbers")
    if not all(math.isfinite(v) for v in [*coef, *mean, intercept]) or not all(
            math.isfinite(v) and v > 0 for v in scale):
        raise ModelError(f"{where}: numbers must be finite, and every scale positive")
    weights = tuple(w / s for w, s in zip(coef, scale, strict=True))
    bias = intercept - sum(w * m for w, m in zip(weights, mean, strict=True))
    return RiskModel(version, weights, tuple(mean), bias, dict(doc.get("trained") or {}))
