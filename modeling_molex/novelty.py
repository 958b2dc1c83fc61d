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

After domain adaptation (`load_experts` / `add_experts`) the model has more experts than the signatures cover.
The signatures are then *extended*: each router row gets 0 for every new expert, which is exactly the usage those
experts had in the model the signatures were derived from (they did not exist). What that does not capture is that
the new router rows can take some of a known class's routing for themselves: a known-class clip that now fires a new
expert reads as farther from its class than it is. `NoveltyResult.signatures` says "extended" (or "derived" for
signatures computed on this very model), `RoutingSignatures.extended_experts` names the zero columns, and
re-running the expert analysis on the adapted model derives them anew. With only the old packs active
(`set_active_packs`), routing never reaches the new experts and the extended signatures are exact.

Optional fields that `save_pretrained` writes: `expert_packs` (the packs the vectors cover, in router-column order),
`extended_experts` (experts whose columns were added as zeros) and `dropped` (what an earlier save did not carry
over, and why).
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .safe_files import read_json


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
    "signatures_file_contents",
]

SIGNATURES_FILE = "routing_signatures.json"
NOVELTY_PERCENTILE = 95.0  # the threshold: this percentile of the reference (training) clips' own distances
DISTANCE_DESCRIPTION = "L1 distance to the nearest known centroid / (2 * top_k * routers)"
FILE_FIELDS = (
    "distance",
    "top_k",
    "router_names",
    "threshold",
    "known",
    "expert_packs",
    "extended_experts",
    "dropped",
)


@dataclass(frozen=True)
class RoutingSignatures:
    """Known classes' mean flattened expert usage, and the distance beyond which routing counts as novel."""

    known: dict[str, np.ndarray]
    threshold: float
    top_k: int | None = None  # as written by the analysis; None: take the model's
    router_names: list[str] | None = None
    expert_packs: dict[str, int] | None = None  # packs the vectors cover; None: not recorded (the analysis's files)
    extended_experts: tuple[str, ...] = ()  # experts whose columns were added as 0 (see the module docstring)
    description: str | None = None  # the file's "distance" text
    unknown_fields: tuple[str, ...] = ()  # fields of the file this code does not know
    dropped: tuple[str, ...] = ()  # what earlier saves did not carry over

    @property
    def size(self) -> int:
        """Length of every signature vector (routers x experts)."""
        return len(next(iter(self.known.values())))

    @property
    def origin(self) -> str:
        """ "derived" (computed on a model with exactly these experts) or "extended" (zero columns added since)."""
        return "extended" if self.extended_experts else "derived"


@dataclass(frozen=True)
class NoveltyResult:
    nearest: str  # the known class (attack id or "bonafide") whose signature is closest
    distance: float  # signature_distance to it, in [0, 1]
    threshold: float
    novel: bool  # distance > threshold: unlike every known class
    signatures: str = "derived"  # "extended": the signatures predate some experts (their columns are 0)


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
    novel = distance > signatures.threshold
    return NoveltyResult(nearest_name, distance, signatures.threshold, novel, signatures.origin)


def check_signatures(
    signatures: RoutingSignatures,
    router_names: list[str],
    num_experts: int,
    top_k: int,
    source: str,
    expert_packs: dict[str, int] | None = None,
) -> RoutingSignatures:
    """Fit signatures to the model: refuse those written for another model (routers, experts, top_k or router names
    differ); extend those derived before the model's last packs were added (zero columns, see the module docstring).

    `expert_packs` (the model's, in router-column order) lets the check see pack boundaries: signatures can only
    cover a prefix of whole packs, since packs are only ever appended."""
    routers = len(router_names)
    expected = routers * num_experts
    mismatch = (
        f"{source}: signatures have {signatures.size} values but this model has "
        f"{routers} routers x {num_experts} experts = {expected}"
    )
    if signatures.top_k not in (None, top_k):
        raise ValueError(f"{source}: top_k is {signatures.top_k} but this model routes to top_k={top_k}")
    if signatures.router_names not in (None, list(router_names)):
        raise ValueError(f"{source}: router_names {signatures.router_names} differ from the model's {router_names}")
    if signatures.size == expected and signatures.expert_packs in (None, expert_packs, dict(expert_packs or {})):
        return signatures
    covered = signatures.size // routers if routers and signatures.size % routers == 0 else None
    packs = list((expert_packs or {}).items())
    boundaries = [sum(size for _, size in packs[:end]) for end in range(len(packs) + 1)]
    if covered is None or covered > num_experts or (packs and covered not in boundaries):
        raise ValueError(
            mismatch + ("; the signatures cover no prefix of whole packs " + str(dict(packs)) if packs else "")
        )
    if signatures.expert_packs is not None and packs:
        prefix = dict(packs[: boundaries.index(covered)])
        if signatures.expert_packs != prefix:
            raise ValueError(
                f"{source}: `expert_packs` {signatures.expert_packs} are not the first packs of this model "
                f"({dict(packs)}); these signatures were derived for other experts"
            )
    if covered == num_experts:
        return signatures
    known = {
        name: np.pad(vector.reshape(routers, covered), ((0, 0), (0, num_experts - covered))).reshape(-1)
        for name, vector in signatures.known.items()
    }
    added = tuple(f"expert_{i}" for i in range(covered, num_experts))
    return dataclasses.replace(
        signatures,
        known=known,
        expert_packs=dict(packs) if packs else None,
        extended_experts=(*signatures.extended_experts, *added),
    )


def signatures_file_contents(
    signatures: RoutingSignatures, router_names: list[str], expert_packs: dict[str, int], top_k: int
) -> dict:
    """What `save_pretrained` writes as `routing_signatures.json` for signatures fitted to the model: everything
    valid for it, and under `dropped` what was not carried over (fields this code does not know, whose meaning for
    the model's experts it cannot vouch for) plus what earlier saves dropped."""
    dropped = [
        *signatures.dropped,
        *(f"field {name!r}: not a routing-signatures field, not carried over" for name in signatures.unknown_fields),
    ]
    return {
        "distance": signatures.description or DISTANCE_DESCRIPTION,
        "top_k": int(top_k),
        "router_names": list(router_names),
        "threshold": signatures.threshold,
        "known": {name: np.asarray(vector, dtype=np.float64).tolist() for name, vector in signatures.known.items()},
        "expert_packs": dict(expert_packs),
        "extended_experts": list(signatures.extended_experts),
        "dropped": dropped,
    }


def load_routing_signatures(path: str | Path) -> RoutingSignatures:
    """Read and validate `routing_signatures.json`; every problem raises ValueError naming the file and the field."""
    path = Path(path)
    try:
        data = read_json(str(path))
    except (OSError, ValueError) as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise ValueError(f"{path}: cannot read routing signatures: {reason}") from error
    if not isinstance(data, dict) or not isinstance(data.get("known"), dict) or not data["known"]:
        raise ValueError(f"{path}: 'known' must be a non-empty object mapping class names to usage vectors")
    threshold = data.get("threshold")
    if not _is_finite_number(threshold):
        raise ValueError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    top_k = data.get("top_k")
    if top_k is not None and not _is_positive_int(top_k):
        raise ValueError(f"{path}: 'top_k' must be a positive integer, got {top_k!r}")
    router_names = data.get("router_names")
    if router_names is not None and not _is_list_of_strings(router_names):
        raise ValueError(f"{path}: 'router_names' must be a list of strings")
    expert_packs = data.get("expert_packs")
    if expert_packs is not None and not (
        isinstance(expert_packs, dict) and expert_packs and all(map(_is_positive_int, expert_packs.values()))
    ):
        raise ValueError(f"{path}: 'expert_packs' must map pack names to positive expert counts, got {expert_packs!r}")
    for field in ("extended_experts", "dropped"):
        if not _is_list_of_strings(data.get(field, [])):
            raise ValueError(f"{path}: '{field}' must be a list of {'expert names' if field[0] == 'e' else 'strings'}")
    known = {}
    for name, values in data["known"].items():
        if not isinstance(values, list) or not values or not all(_is_finite_number(v) for v in values):
            raise ValueError(f"{path}: known[{name!r}] must be a non-empty list of finite numbers")
        known[name] = np.asarray(values, dtype=np.float64)
    sizes = {len(vector) for vector in known.values()}
    if len(sizes) > 1:
        raise ValueError(f"{path}: the vectors in 'known' differ in length ({sorted(sizes)}); they must all be equal")
    description = data.get("distance")
    return RoutingSignatures(
        known,
        float(threshold),
        top_k,
        router_names,
        expert_packs=expert_packs,
        extended_experts=tuple(data.get("extended_experts", [])),
        description=description if isinstance(description, str) else None,
        unknown_fields=tuple(sorted(set(data) - set(FILE_FIELDS))),
        dropped=tuple(data.get("dropped", [])),
    )


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_list_of_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
