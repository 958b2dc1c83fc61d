"""Score a split with a (possibly distributed) model, and turn scores into metrics, tables, files and plots.

Every rank scores its shard; the (utt_id, score) pairs are gathered and averaged per utterance. Averaging per
utt_id also absorbs the duplicates that distributed samplers add to even out the last batch, and merges the windows
of `eval_mode="windows"`, so the same code is right for one process or many.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_molex import detection_scores
from training.data.audio import ClipPolicy
from training.data.loaders import AudioCollator
from training.metrics.asvspoof_metrics import breakdown_by_attack, breakdown_by_codec, compute_metrics, format_table
from training.metrics.calibration import apply_calibration
from training.metrics.score_files import write_key_file, write_score_file


@dataclass
class SplitScores:
    """Raw (uncalibrated) scores of one split, one per utterance, sorted by utt_id."""

    utt_ids: list[str]
    scores: np.ndarray  # (N,) float64, logit[bonafide] - logit[spoof], averaged over windows
    labels: np.ndarray  # (N,) int, 1 = bonafide
    expert_usage: np.ndarray | None = None  # (N, routers, experts), averaged over windows, when requested


@torch.no_grad()
def score_loader(
    model: torch.nn.Module,
    loader,
    accelerator: Accelerator,
    with_usage: bool = False,
    description: str = "scoring",
) -> SplitScores:
    was_training = model.training
    model.eval()
    local: list[tuple] = []
    for batch in tqdm(loader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        utt_ids = batch.pop("utt_ids")
        labels = batch.pop("labels")
        if len(utt_ids) == 0:  # every clip of the batch failed to decode and was skipped (and counted)
            continue
        output = model(**batch)
        scores = detection_scores(output.logits).cpu().numpy()
        usage = output.expert_usage.float().cpu().numpy() if with_usage else [None] * len(utt_ids)
        local.extend(zip(utt_ids, scores.tolist(), labels.cpu().tolist(), usage, strict=True))
    model.train(was_training)
    rows = gather_object(local) if accelerator.num_processes > 1 else local
    return _average_per_utterance(rows, with_usage)


def score_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    with_usage: bool = False,
    eval_mode: str = "full",
    accelerator: Accelerator | None = None,
) -> SplitScores:
    """Score a dataset outside a training run (evaluation and analysis scripts); shards it when `accelerator`
    runs several processes."""
    accelerator = accelerator or Accelerator()
    policy = ClipPolicy(normalize=model.config.normalize_audio, eval_mode=eval_mode)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=AudioCollator(policy, train=False))
    model, loader = accelerator.prepare(model, loader)
    return score_loader(model, loader, accelerator, with_usage=with_usage, description=str(dataset.split or "scoring"))


def _average_per_utterance(rows: list[tuple], with_usage: bool) -> SplitScores:
    totals: dict[str, list] = {}
    for utt_id, score, label, usage in rows:
        entry = totals.setdefault(utt_id, [0.0, 0, label, None])
        entry[0] += score
        entry[1] += 1
        if with_usage:
            entry[3] = usage if entry[3] is None else entry[3] + usage
    utt_ids = sorted(totals)
    scores = np.array([totals[u][0] / totals[u][1] for u in utt_ids], dtype=np.float64)
    labels = np.array([totals[u][2] for u in utt_ids], dtype=np.int64)
    usage = np.stack([totals[u][3] / totals[u][1] for u in utt_ids]) if with_usage and utt_ids else None
    return SplitScores(utt_ids, scores, labels, usage)


def aligned_column(dataset: Dataset, split: SplitScores, column: str) -> list:
    """`dataset[column]` in the order of `split.utt_ids` (scores are sorted by utt_id and deduplicated)."""
    value_of = dict(zip(dataset["utt_id"], dataset[column], strict=True))
    return [value_of[utt_id] for utt_id in split.utt_ids]


def metrics_for(split: SplitScores, calibration: dict | None) -> dict:
    """EER / minDCF / actDCF / Cllr on calibrated scores, plus trial counts."""
    result = compute_metrics(apply_calibration(split.scores, calibration), split.labels)
    result["num_bonafide"] = int((split.labels == 1).sum())
    result["num_spoof"] = int((split.labels == 0).sum())
    return result


def known_and_unseen_metrics(
    split: SplitScores, dataset: Dataset, train_attacks: set[str], calibration: dict | None
) -> dict[str, dict]:
    """Metrics on eval spoofs of attacks seen in training vs never seen (each against all bona fide)."""
    attacks = np.array(aligned_column(dataset, split, "attack"))
    spoof = split.labels == 0
    known = np.isin(attacks, list(train_attacks))
    results = {}
    for name, chosen in (("known", known), ("unseen", ~known)):
        keep = (split.labels == 1) | (spoof & chosen)
        if (split.labels[keep] == 0).any():
            subset = SplitScores(
                [u for u, k in zip(split.utt_ids, keep, strict=True) if k], split.scores[keep], split.labels[keep]
            )
            results[f"{name}_attacks"] = {
                **metrics_for(subset, calibration),
                "attacks": sorted(set(attacks[spoof & chosen])),
            }
    return results


def write_split_reports(
    directory: Path, name: str, split: SplitScores, dataset: Dataset, calibration: dict | None
) -> dict[str, list[dict]]:
    """Official-format score and key files, per-attack and per-codec tables (markdown + JSON)."""
    directory.mkdir(parents=True, exist_ok=True)
    scores = apply_calibration(split.scores, calibration)
    write_score_file(directory / f"{name}_scores.tsv", split.utt_ids, scores)
    write_key_file(directory / f"{name}_keys.tsv", split.utt_ids, split.labels)
    tables = {
        f"{name}_by_attack": breakdown_by_attack(scores, split.labels, aligned_column(dataset, split, "attack")),
        f"{name}_by_codec": breakdown_by_codec(scores, split.labels, aligned_column(dataset, split, "codec")),
    }
    for table_name, table in tables.items():
        (directory / f"{table_name}.md").write_text(format_table(table) + "\n")
        (directory / f"{table_name}.json").write_text(json.dumps(table, indent=2) + "\n")
    return tables
