"""Novel-attack indicator: how far a clip's routing is from the routing of every known class.

MoLEx routes each clip to top_k experts per router. If clips of one attack consistently fire the same experts, the
mean expert usage of that attack is its *routing signature*. A spoof whose routing lies far from every known
signature was probably made by a method the model did not see in training, which is worth flagging even when the
verdict is right.

`python -m training.analysis.analyze_experts` writes the signatures next to the model as `routing_signatures.json`:

    {"known": {"A01": [...], "bonafide": [...]}, "threshold": 0.21, "top_k": 2, "router_names": [...], ...}

Each vector is a class's mean `expert_usage` (routers x experts, in `model.router_names` order), flattened row by
row. The distance is the L1 distance divided by its maximum, 2 * top_k * routers (each router's usage row sums to
top_k), so 0 = routed exactly like a known class and 1 = disjoint experts in every router; `threshold` is in those
units (the analysis takes the 95th percentile of the training clips' own distances). `top_k` and `router_names` are
optional in the file; the demo checks them against the model when present. Plain numpy, no model or UI.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


__all__ = [
    "SIGNATURES_FILE",
    "NoveltyResult",
    "RoutingSignatures",
    "load_routing_signatures",
    "routing_novelty",
    "signature_distance",
]

SIGNATURES_FILE = "routing_signatures.json"


@dataclass(frozen=True)
class RoutingSignatures:
    """Known classes' mean flattened expert usage, and the distance beyond which routing counts as novel."""

    known: dict[str, np.ndarray]
    threshold: float
    top_k: int | None = None  # as written by the analysis; None: take the model's
    router_names: list[str] | None = None

    @property
    def size(self) -> int:
        """Length of every signature vector (routers x experts)."""
        return len(next(iter(self.known.values())))


@dataclass(frozen=True)
class NoveltyResult:
    nearest: str  # the known class (attack id or "bonafide") whose signature is closest
    distance: float  # signature_distance to it, in [0, 1]
    threshold: float
    novel: bool  # distance > threshold: unlike every known class


def signature_distance(usage: np.ndarray, signature: np.ndarray, top_k: int) -> float:
    """L1 distance between (routers, experts) usage and a flattened signature, / its maximum 2 * top_k * routers."""
    usage = np.asarray(usage, dtype=np.float64)
    routers = usage.shape[0]
    return float(np.abs(usage.reshape(-1) - np.asarray(signature, dtype=np.float64)).sum() / (2.0 * top_k * routers))


def routing_novelty(usage: np.ndarray, signatures: RoutingSignatures, top_k: int) -> NoveltyResult:
    """Nearest known signature to a clip's (routers, experts) expert usage, and whether it is beyond the threshold."""
    usage = np.asarray(usage, dtype=np.float64)
    if usage.ndim != 2:
        raise ValueError(f"expert usage must be (routers, experts), got shape {usage.shape}")
    if usage.size != signatures.size:
        raise ValueError(
            f"expert usage has {usage.size} values but the routing signatures have {signatures.size}: "
            "they were computed for a model with a different number of routers or experts"
        )
    distances = {name: signature_distance(usage, signature, top_k) for name, signature in signatures.known.items()}
    nearest = min(distances, key=distances.get)
    return NoveltyResult(nearest, distances[nearest], signatures.threshold, distances[nearest] > signatures.threshold)


def clip_novelty(window_usages: np.ndarray, signatures: RoutingSignatures, top_k: int) -> NoveltyResult:
    """Novelty of a clip scored in windows: the mean of its windows' distances (nearest = their most common nearest).

    Each window is one routing decision, like each reference clip the threshold came from; the distance of the
    windows' *averaged* usage would be smaller and flag long clips less often than the threshold promises.
    """
    per_window = [routing_novelty(usage, signatures, top_k) for usage in window_usages]  # window_usages: (W, R, E)
    distance = float(np.mean([result.distance for result in per_window]))
    names = [result.nearest for result in per_window]
    nearest = max(dict.fromkeys(names), key=names.count)
    return NoveltyResult(nearest, distance, signatures.threshold, distance > signatures.threshold)


def load_routing_signatures(path: str | Path) -> RoutingSignatures:
    """Read and validate `routing_signatures.json`; every problem raises ValueError naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read routing signatures: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("known"), dict) or not data["known"]:
        raise ValueError(f"{path}: 'known' must be a non-empty object mapping class names to usage vectors")
    threshold = data.get("threshold")
    if not _is_finite_number(threshold):
        raise ValueError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    top_k = data.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"{path}: 'top_k' must be a positive integer, got {top_k!r}")
    router_names = data.get("router_names")
    if router_names is not None and not (
        isinstance(router_names, list) and all(isinstance(n, str) for n in router_names)
    ):
        raise ValueError(f"{path}: 'router_names' must be a list of strings")
    known = {}
    for name, values in data["known"].items():
        if not isinstance(values, list) or not values or not all(_is_finite_number(v) for v in values):
            raise ValueError(f"{path}: known[{name!r}] must be a non-empty list of finite numbers")
        known[name] = np.asarray(values, dtype=np.float64)
    sizes = {len(vector) for vector in known.values()}
    if len(sizes) > 1:
        raise ValueError(f"{path}: the vectors in 'known' differ in length ({sorted(sizes)}); they must all be equal")
    return RoutingSignatures(known, float(threshold), top_k, router_names)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
