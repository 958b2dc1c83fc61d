"""Which experts fire for which attacks: usage tables, the heatmap, routing signatures and a novel-attack score.

    python -m training.analysis.analyze_experts MODEL_DIR DATA_ROOT --split eval [--reference_split train] [--output_dir D]

- Usage per attack (and per codec) per layer: the mean of each clip's `expert_usage` (routers x experts) -> JSON and
  a heatmap PNG (attacks x experts, one panel per layer), the figure the MoLEx paper discusses.
- Routing signature of a clip: its flattened usage. Signatures of the reference split (train: attacks the model
  knows) are averaged per attack into centroids.
- Novel-attack score of a clip: the model's own novelty distance (`modeling_molex.novelty.clip_novelty`, the one
  `score_waveform` reports): per window, the L1 distance of its routing to the nearest centroid divided by its maximum
  (2 * top_k * routers), averaged over the clip's windows; 0 = routed exactly like a known class, 1 = disjoint
  experts everywhere. The threshold is the 95th percentile of the reference clips' own scores. Centroids + threshold
  go to MODEL_DIR/routing_signatures.json, which `score_waveform` (pipeline, CLI, demo) reads; how well the score
  separates unseen from known attacks (ROC AUC, Mann-Whitney U) is reported, not assumed.

Every clip is scored through `model.score_waveforms` (windows of the training crop), as everywhere else.
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402

from modeling_molex import MoLExForAudioClassification  # noqa: E402
from modeling_molex.novelty import NOVELTY_PERCENTILE, SIGNATURES_FILE, RoutingSignatures, clip_novelty  # noqa: E402
from training.data.loaders import load_asvspoof5, load_asvspoof2019_la  # noqa: E402
from training.metrics.scoring import aligned_column, score_dataset  # noqa: E402
from training.trainer.run_setup import subsample  # noqa: E402


__all__ = [
    "SIGNATURES_FILE",
    "analyze",
    "novelty_scores",
    "roc_auc",
    "router_balance",
    "specialisation",
    "usage_by_group",
]


def usage_by_group(usage: np.ndarray, groups: list[str]) -> dict[str, np.ndarray]:
    """Mean (routers, experts) usage per group label."""
    names = np.array(groups)
    return {name: usage[names == name].mean(axis=0) for name in sorted(set(groups))}


def router_balance(usage: np.ndarray, router_names: list[str], top_k: int) -> dict[str, dict]:
    """Load and entropy per router, so that collapse shows as a number.

    `usage` is (clips, routers, experts), each clip's share of selections (a router row sums to k). A router's load
    is the share of all selections each expert got (sums to 1); its entropy is in nats, at most ln E (every expert
    equally used) and 0 when one expert takes everything (k = 1); `effective_experts` = exp(entropy).
    """
    load = usage.mean(axis=0) / top_k  # (R, E)
    balance = {}
    for name, row in zip(router_names, load, strict=True):
        share = row[row > 0]
        entropy = float(-(share * np.log(share)).sum())
        balance[name] = {
            "load": row.round(4).tolist(),
            "entropy_nats": round(entropy, 4),
            "max_entropy_nats": round(math.log(len(row)), 4),
            "effective_experts": round(math.exp(entropy), 3),
        }
    return balance


def novelty_scores(window_usages: list[np.ndarray], centroids: dict[str, np.ndarray], top_k: int) -> np.ndarray:
    """Per clip ((windows, routers, experts) usage each): the model's novelty distance to the nearest centroid."""
    signatures = RoutingSignatures(centroids, threshold=math.inf)
    return np.array([clip_novelty(windows, signatures, top_k).distance for windows in window_usages])


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half: the Mann-Whitney U of `positive` / (n_p n_n)."""
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def check_splits(corpus, data_root: str, split: str, reference_split: str, known_attacks: list[str] | None) -> None:
    """Fail before any scoring: an empty split leaves nothing to compare, and a misspelt attack name in
    `known_attacks` would silently count that attack's clips as unseen."""
    for name in dict.fromkeys([reference_split, split]):
        if len(corpus[name]) == 0:
            raise ValueError(f"{data_root}: the {name!r} split is empty: there is no routing to analyse")
    present = set(corpus[split]["attack"]) | set(corpus[reference_split]["attack"])
    unknown = sorted(set(known_attacks or []) - present)
    if unknown:
        raise ValueError(
            f"--known_attacks {unknown}: no such attack in the {split!r} or {reference_split!r} split of "
            f"{data_root} (attacks there: {sorted(present)})"
        )


def save_heatmap(path: Path, table: dict[str, np.ndarray], router_names: list[str], title: str) -> None:
    groups = list(table)
    stacked = np.stack([table[g] for g in groups])  # (G, R, E)
    num_routers, num_experts = stacked.shape[1:]
    columns = min(num_routers, 4)
    rows = int(np.ceil(num_routers / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.2 + 0.45 * num_experts * columns, 0.9 + 0.32 * len(groups) * rows), squeeze=False
    )
    for index, axis in enumerate(axes.flat):
        if index >= num_routers:
            axis.axis("off")
            continue
        image = axis.imshow(stacked[:, index, :], aspect="auto", cmap="viridis", vmin=0, vmax=max(stacked.max(), 1e-9))
        axis.set_title(router_names[index], fontsize=9)
        axis.set_xticks(range(num_experts), [str(e) for e in range(num_experts)], fontsize=7)
        axis.set_yticks(range(len(groups)), groups if index % columns == 0 else [""] * len(groups), fontsize=7)
        axis.set_xlabel("expert", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of selections")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def specialisation(table: dict[str, np.ndarray], ratio: float = 1.5) -> dict[str, list[str]]:
    """Expert -> attacks whose usage of it (mean over layers) is >= `ratio` x its mean over all groups."""
    groups = [g for g in table if g != "bonafide"]
    if not groups:
        return {}
    per_group = np.stack([table[g].mean(axis=0) for g in groups])  # (G, E)
    overall = per_group.mean(axis=0)
    return {
        f"expert_{e}": [groups[g] for g in np.flatnonzero(per_group[:, e] >= ratio * max(overall[e], 1e-9))]
        for e in range(per_group.shape[1])
    }


def analyze(
    model_dir: str,
    data_root: str,
    split: str,
    reference_split: str,
    output_dir: str | None,
    dataset_name: str = "asvspoof5",
    known_attacks: list[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 16,
) -> dict:
    model = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    loader = load_asvspoof5 if dataset_name == "asvspoof5" else load_asvspoof2019_la
    corpus = loader(data_root, splits=list(dict.fromkeys([reference_split, split])))
    check_splits(corpus, data_root, split, reference_split, known_attacks)
    output = Path(output_dir or Path(model_dir).parent / "analysis")
    output.mkdir(parents=True, exist_ok=True)
    top_k = model.config.adapter.top_k
    results: dict = {"model": str(model_dir), "split": split, "reference_split": reference_split}
    scored = {}
    for name in dict.fromkeys([reference_split, split]):
        dataset = subsample(corpus[name], max_samples, seed=0)
        scored[name] = (score_dataset(model, dataset, batch_size, with_usage=True), dataset)
    reference, reference_data = scored[reference_split]
    reference_groups = aligned_column(reference_data, reference, "attack")
    centroid_table = usage_by_group(reference.expert_usage, reference_groups)
    known_names = list(centroid_table)
    centroids = {name: centroid_table[name].reshape(-1) for name in known_names}
    reference_novelty = novelty_scores(reference.window_usage, centroids, top_k)
    threshold = float(np.percentile(reference_novelty, NOVELTY_PERCENTILE))

    target, target_data = scored[split]
    attacks = aligned_column(target_data, target, "attack")
    codecs = aligned_column(target_data, target, "codec")
    by_attack = usage_by_group(target.expert_usage, attacks)
    by_codec = usage_by_group(target.expert_usage, codecs)
    novelty = novelty_scores(target.window_usage, centroids, top_k)
    router_names = model.router_names
    save_heatmap(output / f"expert_usage_{split}.png", by_attack, router_names, f"Expert usage per attack ({split})")
    save_heatmap(
        output / f"expert_usage_{reference_split}.png",
        centroid_table,
        router_names,
        f"Expert usage per attack ({reference_split})",
    )

    known = set(known_names) | set(known_attacks or [])
    attack_array = np.array(attacks)
    is_spoof = target.labels == 0
    unseen = is_spoof & ~np.isin(attack_array, list(known))
    seen = ~unseen
    separation = None
    if unseen.any() and seen.any():
        separation = {
            "roc_auc_unseen_vs_known": roc_auc(novelty[unseen], novelty[seen]),  # vs known spoofs + bona fide
            "flagged_unseen": float((novelty[unseen] > threshold).mean()),
            "flagged_known_or_bonafide": float((novelty[seen] > threshold).mean()),
            "num_unseen": int(unseen.sum()),
            "num_known_or_bonafide": int(seen.sum()),
        }
    results |= {
        "router_names": router_names,
        "usage_by_attack": {k: v.round(4).tolist() for k, v in by_attack.items()},
        "usage_by_codec": {k: v.round(4).tolist() for k, v in by_codec.items()},
        "usage_by_attack_reference": {k: v.round(4).tolist() for k, v in centroid_table.items()},
        "expert_specialisation": specialisation(centroid_table),
        "router_balance": router_balance(target.expert_usage, router_names, top_k),
        "router_balance_reference": router_balance(reference.expert_usage, router_names, top_k),
        "novelty": {
            "threshold": threshold,
            "mean_by_attack": {a: float(novelty[attack_array == a].mean()) for a in sorted(set(attacks))},
            "separation": separation,
        },
        "figures": {
            "expert_usage": f"expert_usage_{split}.png",
            "expert_usage_reference": f"expert_usage_{reference_split}.png",
        },
    }
    (output / "expert_analysis.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(output / f"routing_signatures_{split}.tsv", "w") as handle:
        handle.write("utt_id\tattack\tcodec\tnovelty\tsignature\n")
        for i, utt_id in enumerate(target.utt_ids):
            signature = " ".join(f"{v:.3g}" for v in target.expert_usage[i].reshape(-1))
            handle.write(f"{utt_id}\t{attacks[i]}\t{codecs[i]}\t{novelty[i]:.4f}\t{signature}\n")
    signatures = {
        "distance": "L1 distance to the nearest known centroid / (2 * top_k * routers)",
        "top_k": top_k,
        "router_names": router_names,
        "threshold": threshold,
        "known": {name: centroids[name].round(5).tolist() for name in known_names},
    }
    (Path(model_dir) / SIGNATURES_FILE).write_text(json.dumps(signatures, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("data_root")
    parser.add_argument("--split", default="eval")
    parser.add_argument("--reference_split", default="train")
    parser.add_argument("--dataset", default="asvspoof5", choices=["asvspoof5", "asvspoof2019_la"])
    parser.add_argument("--known_attacks", nargs="*", help="eval attacks that reuse a training method")
    parser.add_argument("--output_dir")
    parser.add_argument("--max_samples", type=int)
    args = parser.parse_args(argv)
    results = analyze(
        args.model_dir,
        args.data_root,
        args.split,
        args.reference_split,
        args.output_dir,
        args.dataset,
        args.known_attacks,
        args.max_samples,
    )
    summary = {key: results[key] for key in ("expert_specialisation", "router_balance", "novelty")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
