"""Score a split with a (possibly distributed) model, and turn scores into metrics, tables, files and plots.

Outside training (`score_dataset`: evaluation, expert analysis) every clip goes through the model's own scoring path,
`model.score_waveforms` (windows of the training crop, batched; the same numbers as the pipeline, the CLI and the
demo). Inside training (`score_loader`) batches come from the collator. Every rank scores its shard; the
(utt_id, score) pairs are gathered and averaged per utterance. Averaging per utt_id also absorbs the duplicates that
distributed samplers add to even out the last batch, and merges the windows of `eval_mode="windows"`, so the same
code is right for one process or many.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm

from modeling_molex import detection_scores
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
    window_usage: list[np.ndarray] | None = None  # per utterance (windows, routers, experts), from score_dataset


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
    accelerator: Accelerator | None = None,
) -> SplitScores:
    """Raw (uncalibrated) scores of every row of `dataset` through `model.score_waveforms`, for evaluation and
    analysis scripts. Every trial is scored, near-silent ones too (the official protocol scores every trial); a file
    that cannot be read raises, naming it. Shards the rows when `accelerator` runs several processes."""
    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device).eval()
    shard = range(accelerator.process_index, len(dataset), accelerator.num_processes)
    local: list[tuple] = []
    progress = tqdm(total=len(shard), desc=str(dataset.split or "scoring"), leave=False,
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    indices = list(shard)
    for first in range(0, len(indices), batch_size):
        rows = [dataset[i] for i in indices[first : first + batch_size]]
        paths = [_audio_path(row["audio"]) for row in rows]
        decoded = [model.read_audio(path) for path in paths]
        results = model.score_waveforms(
            [wave for wave, _ in decoded],
            [rate for _, rate in decoded],
            batch_size=batch_size,
            calibrate=False,
            flag_silence=False,
            signatures=None,
            names=paths,
        )
        for row, result in zip(rows, results, strict=True):
            usage = result.window_expert_usage.numpy() if with_usage else None
            local.append((row["utt_id"], result.score, int(row["label"]), usage))
        progress.update(len(rows))
    progress.close()
    rows = gather_object(local) if accelerator.num_processes > 1 else local
    return _collect_clips(rows, with_usage)


def _audio_path(audio: str | dict) -> str:
    """A row's audio column: a path, or `Audio(decode=False)`'s `{"path", "bytes"}`."""
    return audio["path"] if isinstance(audio, dict) else audio


def _collect_clips(rows: list[tuple], with_usage: bool) -> SplitScores:
    """One (utt_id, score, label, window usage) per clip -> SplitScores sorted by utt_id (duplicates merged)."""
    by_id = {utt_id: (score, label, usage) for utt_id, score, label, usage in rows}
    utt_ids = sorted(by_id)
    scores = np.array([by_id[u][0] for u in utt_ids], dtype=np.float64)
    labels = np.array([by_id[u][1] for u in utt_ids], dtype=np.int64)
    if not with_usage or not utt_ids:
        return SplitScores(utt_ids, scores, labels)
    windows = [by_id[u][2] for u in utt_ids]
    return SplitScores(utt_ids, scores, labels, np.stack([w.mean(axis=0) for w in windows]), windows)


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
