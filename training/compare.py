"""The paper's comparison in miniature, on one encoder, one corpus, one step budget and several seeds.

    python -m training.compare [--config configs/tiny.yaml] [--seeds 0 1 2] [--max_steps 120] \\
        [--output_dir outputs/compare] [--corpus_dir DIR] [--rows molex_e8k2 single_lora ...]

Rows: MFCC + LR; the frozen encoder's linear probe (utterance mean + std of every layer, concatenated, logistic
regression with L2 100, `training.encoders.linear_probe`, fit on all of train); the frozen encoder with only the
back-end; a single LoRA with MoLEx E=8, k=2's trainable budget
(rank E x r, one expert); MoLEx E=8, k=2 with and without the orthogonality loss; MoLEx E=4, k=1; full fine-tuning
of the encoder (experts kept at zero). Every neural row runs `training.train` (the one training path) with the same
crops, batch, steps and seeds; only the row's overrides differ. Dev and eval are seeded subsets (`--max_eval_samples`,
the same subset for every row of a seed), and MFCC + LR is scored on exactly those subsets.
Opt-in rows try the MoE literature's remedies for router collapse on MoLEx E=8, k=2: noisy gating, a 10x
load-balance coefficient, expert dropout; every MoLEx row reports its routers' load entropy on the eval subset.
Writes OUTPUT_DIR/results.json (every run and the mean +- std per row) and OUTPUT_DIR/table.md.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from modeling_molex import MoLExForAudioClassification
from training import train
from training.analysis.analyze_experts import router_balance
from training.baselines.mfcc import fit_and_score
from training.data.loaders import audio_paths, load_asvspoof5
from training.encoders import linear_probe
from training.encoders.named_backbones import resolve_named_backbone
from training.metrics.asvspoof_metrics import compute_metrics
from training.metrics.scoring import score_dataset
from training.trainer.config import TrainConfig, load_yaml_config, parse_train_config
from training.trainer.run_setup import build_model, load_corpus


# The paper's rows route as the paper does, whatever the config sets (a user's config may add expert dropout).
PAPER_ROUTING = {"router_expert_dropout": 0.0, "router_noise_std": 0.0, "load_balance_coef": 0.01}
ROWS = {
    "mfcc_lr": ("MFCC + LR", None),
    "linear_probe": ("frozen encoder, linear probe (all layers' mean + std, LR)", None),
    "frozen_backend": ("frozen encoder, back-end only", {"trainable": "head"}),
    "single_lora": ("single LoRA, MoLEx E8 k2 budget", {"num_experts": 1, "top_k": 1, "rank": 64}),
    "molex_e8k2": ("MoLEx E=8, k=2", {**PAPER_ROUTING, "num_experts": 8, "top_k": 2, "rank": 8}),
    "molex_e8k2_no_orth": ("MoLEx E=8, k=2, no orthogonality loss", {**PAPER_ROUTING, "num_experts": 8, "top_k": 2,
                                                                    "rank": 8, "orthogonality_coef": 0.0}),
    "molex_e4k1": ("MoLEx E=4, k=1", {**PAPER_ROUTING, "num_experts": 4, "top_k": 1, "rank": 8}),
    "full_finetune": ("full fine-tuning (encoder + back-end)", {"trainable": "full"}),
    # router-collapse remedies from the MoE literature (opt-in rows: --rows molex_e8k2 molex_e8k2_noise ...)
    "molex_e8k2_noise": ("MoLEx E=8, k=2, router noise 1.0", {**PAPER_ROUTING, "num_experts": 8, "top_k": 2,
                                                             "rank": 8, "router_noise_std": 1.0}),
    "molex_e8k2_balance": ("MoLEx E=8, k=2, load balance 0.1", {**PAPER_ROUTING, "num_experts": 8, "top_k": 2,
                                                               "rank": 8, "load_balance_coef": 0.1}),
    "molex_e8k2_expert_dropout": ("MoLEx E=8, k=2, expert dropout 0.25", {**PAPER_ROUTING, "num_experts": 8,
                                                                         "top_k": 2, "rank": 8,
                                                                         "router_expert_dropout": 0.25}),
}  # fmt: skip
PAPER_ROWS = ["mfcc_lr", "linear_probe", "frozen_backend", "single_lora", "molex_e8k2", "molex_e8k2_no_orth", "molex_e4k1",
              "full_finetune"]  # fmt: skip
# train_seconds: the whole run, training + scoring
# router_entropy: the mean over blocks of the load entropy on the eval subset (nats; ln E when all experts are equally
# used, `training.analysis.analyze_experts.router_balance`); min_router_entropy: the most collapsed block's
COLUMNS = (
    "dev_eer",
    "dev_min_dcf",
    "eval_known_eer",
    "eval_unseen_eer",
    "router_entropy",
    "min_router_entropy",
    "trainable_parameters",
    "train_seconds",
)


def _argv(overrides: dict) -> list[str]:
    argv = []
    for key, value in overrides.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv


def trainable_parameters(config: TrainConfig) -> int:
    """Built the way training builds it (same config), then counted: what the row really trains. accelerate keeps
    one device / precision state per process and `train.main` runs next in this one, so the Accelerator asks for the
    run's own `cpu` and `mixed_precision` (a `cpu=True` here refused bf16 / fp16 rows and put GPU rows on the CPU)."""
    model = build_model(config, Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def router_entropies(config: TrainConfig, model_dir: Path) -> dict:
    """Mean and smallest per-block load entropy of the trained model's routers on the run's eval subset (empty for
    rows without a choice of experts)."""
    if config.trainable != "experts" or config.num_experts <= config.top_k:
        return {}
    model = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    adapter = model.config.adapter
    dataset = load_corpus(config)[config.eval_split or config.dev_split]
    scored = score_dataset(model, dataset, config.eval_batch_size, with_usage=True)
    return entropy_columns(router_balance(scored.expert_usage, model.router_names, adapter.top_k))


def entropy_columns(balance: dict[str, dict]) -> dict:
    """The table's two entropy columns from `router_balance`: the mean over blocks and the most collapsed block's."""
    entropies = [block["entropy_nats"] for block in balance.values()]
    return {"router_entropy": statistics.fmean(entropies), "min_router_entropy": min(entropies)}


def row_overrides(row: str, learning_rate: float, full_finetune_lr_scale: float) -> dict | None:
    """The row's training overrides; full fine-tuning also scales the config's learning rate (a copy: `ROWS` stays
    as declared, so a second `main` in one process starts from the same rows)."""
    overrides = ROWS[row][1]
    if row == "full_finetune":
        overrides = {**overrides, "learning_rate": learning_rate * full_finetune_lr_scale}
    return overrides


def run_neural(row: str, seed: int, base_argv: list[str], output_dir: Path, overrides: dict) -> dict:
    argv = [
        *base_argv,
        *_argv(overrides),
        "--seed",
        str(seed),
        "--output_dir",
        str(output_dir / row / f"seed{seed}"),
    ]
    (output_dir / row / f"seed{seed}").mkdir(parents=True, exist_ok=True)  # a tiny-random backbone is built there
    config = parse_train_config(argv)
    count = trainable_parameters(config)
    started = time.time()
    results = train.main(argv)
    metrics = results["metrics"]
    seconds = round(time.time() - started, 1)
    return {
        "dev_eer": metrics["dev"]["eer"],
        "dev_min_dcf": metrics["dev"]["min_dcf"],
        "eval_known_eer": (metrics.get("eval_known_attacks") or {}).get("eer"),
        "eval_unseen_eer": (metrics.get("eval_unseen_attacks") or {}).get("eer"),
        "trainable_parameters": count,
        "train_seconds": seconds,
        **router_entropies(config, output_dir / row / f"seed{seed}" / "model"),
    }


def mfcc_lr_scores(corpus_dir: str, known_attacks: list[str]) -> dict:
    """The project's MFCC baseline (training.baselines.mfcc features + logistic regression), fit on all of train;
    scores per utterance id, so each seed's subset can be scored."""
    started = time.time()
    data, all_scores, parameters = fit_and_score(corpus_dir, ["mfcc"], l2=1.0)
    scores = {
        split: dict(zip(data[split]["utt_id"], all_scores[split].tolist(), strict=True)) for split in ("dev", "eval")
    }
    trained_on = set(data["train"]["attack"]) - {"bonafide"}
    return {
        **scores,
        "known_attacks": sorted(trained_on | set(known_attacks)),
        "parameters": parameters,
        "seconds": round(time.time() - started, 1),
    }


PROBE_POOLING, PROBE_L2 = "layer_concat", 100.0


def linear_probe_scores(backbone: str, corpus_dir: str, known_attacks: list[str], output_dir: Path) -> dict:
    """The frozen encoder's linear probe, fit on all of train; scores per utterance id (as `mfcc_lr_scores`)."""
    started = time.time()
    backbone = resolve_named_backbone(backbone, output_dir / "linear_probe")  # what train.py builds or converts
    encoder = linear_probe.load_encoder(backbone, random_init=False)
    data = load_asvspoof5(corpus_dir, splits=("train", "dev", "eval"))
    features = {split: linear_probe.embed(encoder, audio_paths(data[split]))[PROBE_POOLING] for split in data}
    all_scores = linear_probe.fit_probe(features, np.asarray(data["train"]["label"]), PROBE_L2)
    scores = {
        split: dict(zip(data[split]["utt_id"], all_scores[split].tolist(), strict=True)) for split in ("dev", "eval")
    }
    trained_on = set(data["train"]["attack"]) - {"bonafide"}
    return {
        **scores,
        "known_attacks": sorted(trained_on | set(known_attacks)),
        "parameters": features["train"].shape[1] + 1,
        "seconds": round(time.time() - started, 1),
    }


def run_mfcc(seed: int, base_argv: list[str], mfcc_scores: dict) -> dict:
    """A fixed scorer fit on all of train (MFCC + LR, the linear probe: deterministic) scored on the seed's dev /
    eval subsets, the ones the neural rows saw."""
    config = parse_train_config([*base_argv, "--seed", str(seed)])
    corpus = load_corpus(config)
    known = set(mfcc_scores["known_attacks"])
    row = {"trainable_parameters": mfcc_scores["parameters"], "train_seconds": mfcc_scores["seconds"]}
    for split in ("dev", "eval"):
        ids = corpus[split]["utt_id"]
        scores = np.array([mfcc_scores[split][i] for i in ids])
        labels = np.asarray(corpus[split]["label"])
        attacks = np.asarray(corpus[split]["attack"])
        if split == "dev":
            metrics = compute_metrics(scores, labels)
            row |= {"dev_eer": metrics["eer"], "dev_min_dcf": metrics["min_dcf"]}
            continue
        for name, keep in (("known", np.isin(attacks, list(known))), ("unseen", ~np.isin(attacks, list(known)))):
            chosen = (labels == 1) | ((labels == 0) & keep)
            ok = (labels[chosen] == 0).any() and (labels[chosen] == 1).any()
            row[f"eval_{name}_eer"] = compute_metrics(scores[chosen], labels[chosen])["eer"] if ok else None
    return row


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for column in COLUMNS:
        values = [r[column] for r in runs if r.get(column) is not None]
        if values:
            summary[column] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    return summary


def _cell(summary: dict, column: str, scale: float = 100.0, digits: int = 1) -> str:
    if column not in summary:
        return "n/a"
    return f"{scale * summary[column]['mean']:.{digits}f} ± {scale * summary[column]['std']:.{digits}f}"


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| system | dev EER (%) | dev minDCF | eval EER known (%) | eval EER unseen (%) | router entropy mean / min "
        "(nats) | trainable params | run time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in rows.items():
        s = entry["summary"]
        params = f"{int(s['trainable_parameters']['mean']):,}" if "trainable_parameters" in s else "n/a"
        entropy = "n/a"
        if "router_entropy" in s:
            entropy = f"{_cell(s, 'router_entropy', 1.0, 2)} / {_cell(s, 'min_router_entropy', 1.0, 2)}"
        lines.append(
            f"| {ROWS[key][0]} | {_cell(s, 'dev_eer')} | {_cell(s, 'dev_min_dcf', 1.0, 3)} | "
            f"{_cell(s, 'eval_known_eer')} | {_cell(s, 'eval_unseen_eer')} | {entropy} | {params} | "
            f"{_cell(s, 'train_seconds', 1.0, 0)} |"
        )
    return "\n".join(lines)


def merge_results(folders: list[Path], output_dir: Path) -> dict:
    """One results.json and table.md from runs that split the rows over processes (same settings required)."""
    parts = [json.loads((folder / "results.json").read_text()) for folder in folders]
    settings = {k: v for k, v in parts[0]["settings"].items()}
    for folder, part in zip(folders, parts, strict=True):
        if part["settings"] != settings:
            raise ValueError(f"{folder}/results.json was run with other settings: {part['settings']} != {settings}")
    rows = {name: row for part in parts for name, row in part["rows"].items()}
    results = {"settings": settings, "rows": {name: rows[name] for name in ROWS if name in rows}}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results["rows"])
    (output_dir / "table.md").write_text(text + "\n")
    print(text)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--output_dir", default="outputs/compare")
    parser.add_argument("--corpus_dir", help="default: the config's data_root")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=PAPER_ROWS, help=f"default: the paper's rows {PAPER_ROWS}"
    )
    parser.add_argument("--max_steps", type=int, default=120, help="the step budget of every neural row")
    parser.add_argument("--crop_samples", type=int, default=16000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_eval_samples", type=int, default=300, help="seeded dev / eval subset per seed")
    parser.add_argument("--full_finetune_lr_scale", type=float, default=0.25, help="full FT LR = config LR x this")
    parser.add_argument("--train_args", nargs=argparse.REMAINDER, default=[], help="extra train.py overrides")
    parser.add_argument(
        "--merge_from", nargs="+", help="only merge the results.json of runs split over processes (by --rows)"
    )
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.merge_from:
        return merge_results([Path(folder) for folder in args.merge_from], output_dir)
    config = load_yaml_config(args.config)
    corpus_dir = args.corpus_dir or config["data_root"]
    base = {"data_root": corpus_dir, "max_steps": args.max_steps, "crop_samples": args.crop_samples}
    base |= {"batch_size": args.batch_size, "max_eval_samples": args.max_eval_samples, "eval_every_steps": 0}
    base |= {"early_stopping_patience": 0, "log_with": "none", "save_total_limit": 1, "calibrate": False}
    base_argv = ["--config", args.config, *_argv(base), *args.train_args]
    results: dict = {"settings": {**base, "config": args.config, "seeds": args.seeds}, "rows": {}}
    known = list(config.get("known_attacks") or [])
    fixed_scores = {}
    if "mfcc_lr" in args.rows:
        fixed_scores["mfcc_lr"] = mfcc_lr_scores(corpus_dir, known)
    if "linear_probe" in args.rows:
        backbone = parse_train_config(base_argv).backbone
        fixed_scores["linear_probe"] = linear_probe_scores(backbone, corpus_dir, known, output_dir)
    for row in args.rows:
        overrides = row_overrides(row, config.get("learning_rate", 1e-4), args.full_finetune_lr_scale)
        runs = []
        for seed in args.seeds:
            if row in fixed_scores:
                run = run_mfcc(seed, base_argv, fixed_scores[row])
            else:
                run = run_neural(row, seed, base_argv, output_dir, overrides)
            runs.append({"seed": seed, **run})
            print(f"[compare] {row} seed {seed}: {json.dumps(run)}", flush=True)
        results["rows"][row] = {
            "label": ROWS[row][0],
            "overrides": overrides,
            "runs": runs,
            "summary": summarise(runs),
        }
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # partial results survive
    text = table(results["rows"])
    (output_dir / "table.md").write_text(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
