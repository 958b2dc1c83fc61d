"""Novel-attack indicator (shipped as remote code): how far a clip's routing is from the routing of every known class.

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
optional in the file; `load_model_signatures` checks them against the model when present. Plain numpy.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


__all__ = [
    "NOVELTY_PERCENTILE",
    "SIGNATURES_FILE",
    "NoveltyResult",
    "RoutingSignatures",
    "check_signatures",
    "clip_novelty",
    "load_routing_signatures",
    "nearest_signatures",
    "routing_novelty",
    "signature_distance",
]

SIGNATURES_FILE = "routing_signatures.json"
NOVELTY_PERCENTILE = 95.0  # the threshold: this percentile of the reference (training) clips' own distances


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
    return float(nearest_signatures(usage[None], np.asarray(signature, np.float64)[None], top_k)[0][0])


def nearest_signatures(usages: np.ndarray, centroids: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, routers, experts) usages vs (C, routers * experts) signatures -> for each of the N: the distance to the
    nearest signature, in [0, 1], and that signature's index. Vectorised: analysis scores whole corpora with it."""
    usages = np.asarray(usages, dtype=np.float64)
    if usages.ndim != 3:
        raise ValueError(f"expert usage must be (clips or windows, routers, experts), got shape {usages.shape}")
    flat = usages.reshape(len(usages), -1)
    if flat.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"expert usage has {flat.shape[1]} values but the routing signatures have {centroids.shape[1]}: "
            "they were computed for a model with a different number of routers or experts"
        )
    distances = np.abs(flat[:, None, :] - centroids[None, :, :]).sum(axis=-1) / (2.0 * top_k * usages.shape[1])
    nearest = distances.argmin(axis=1)
    return distances[np.arange(len(flat)), nearest], nearest


def routing_novelty(usage: np.ndarray, signatures: RoutingSignatures, top_k: int) -> NoveltyResult:
    """Nearest known signature to one (routers, experts) expert usage, and whether it is beyond the threshold."""
    usage = np.asarray(usage, dtype=np.float64)
    if usage.ndim != 2:
        raise ValueError(f"expert usage must be (routers, experts), got shape {usage.shape}")
    return clip_novelty(usage[None], signatures, top_k)


def clip_novelty(window_usages: np.ndarray, signatures: RoutingSignatures, top_k: int) -> NoveltyResult:
    """Novelty of a clip scored in windows: the mean of its windows' distances (nearest = their most common nearest).

    Each window is one routing decision, like each reference clip the threshold came from; the distance of the
    windows' *averaged* usage would be smaller and flag long clips less often than the threshold promises.
    """
    names = list(signatures.known)
    centroids = np.stack([signatures.known[name] for name in names])
    distances, nearest = nearest_signatures(window_usages, centroids, top_k)  # window_usages: (W, R, E)
    distance = float(distances.mean())
    nearest_name = names[int(np.bincount(nearest, minlength=len(names)).argmax())]
    return NoveltyResult(nearest_name, distance, signatures.threshold, distance > signatures.threshold)


def check_signatures(
    signatures: RoutingSignatures, router_names: list[str], num_experts: int, top_k: int, source: str
) -> RoutingSignatures:
    """Refuse signatures written for another model (router count, experts, top_k or router names differ)."""
    expected = len(router_names) * num_experts
    if signatures.size != expected:
        raise ValueError(
            f"{source}: signatures have {signatures.size} values but this model has "
            f"{len(router_names)} routers x {num_experts} experts = {expected}"
        )
    if signatures.top_k not in (None, top_k):
        raise ValueError(f"{source}: top_k is {signatures.top_k} but this model routes to top_k={top_k}")
    if signatures.router_names not in (None, list(router_names)):
        raise ValueError(f"{source}: router_names {signatures.router_names} differ from the model's {router_names}")
    return signatures


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
