"""Domain adaptation by adding experts, measured: old-domain and new-domain EER before and after.

    python -m training.analysis.domain_adaptation BASE_MODEL CORPUS [--new_attacks A10 A11 A12] [--add_experts 2]

The "new domain" is carved out of an ASVspoof-5-layout corpus: its eval bona fide clips plus the spoofs of
`--new_attacks` (by default the mini corpus's unseen eval attacks), split 50/20/30 into train/dev/eval by
`codec_seed` (coded copies of one utterance stay together) and written as a CSV corpus. The base model is adapted
with `train.py --init_from BASE --add_experts N` (backbone, old experts, old router rows and back-end frozen), then
both models are scored on the old domain (the corpus's dev split) and on the new domain's eval split.

`--replay N` adds N clips of the old domain's *train* split (a seeded draw, both classes in their train
proportions) to the new domain's train split. Why: the new router rows are also consulted for old-domain clips;
without old-domain examples nothing teaches them to leave those clips to the old experts, and the old domain's
scores drift. Replay uses only train material, so the old domain's dev split stays a clean measurement.
"""

import argparse
import csv
import json
import random
import zlib
from pathlib import Path

from training import train
from training.data.loaders import load_asvspoof5
from training.evaluate_model import evaluate_model


def write_new_domain_csv(
    corpus: str, new_attacks: list[str], path: Path, replay: int = 0, seed: int = 0
) -> dict[str, int]:
    """The new domain as a CSV corpus; with `replay`, that many old-domain train clips join its train split
    (counted as `replay` in the returned sizes)."""
    splits = ["eval", "train"] if replay else ["eval"]
    data = load_asvspoof5(corpus, splits=splits)
    counts: dict[str, int] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["utt_id", "path", "label", "split", "attack", "speaker", "codec"])

        def write(row: dict, split: str) -> None:
            label = "bonafide" if row["label"] == 1 else "spoof"
            writer.writerow(
                [row["utt_id"], row["audio"]["path"], label, split, row["attack"], row["speaker"], row["codec"]]
            )

        for row in data["eval"]:
            if row["label"] == 0 and row["attack"] not in new_attacks:
                continue
            bucket = zlib.crc32(row["codec_seed"].encode()) % 10
            split = "train" if bucket < 5 else "dev" if bucket < 7 else "eval"
            write(row, split)
            counts[split] = counts.get(split, 0) + 1
        if replay:
            old_train = data["train"]
            if replay > len(old_train):
                raise ValueError(
                    f"`replay` asks for {replay} old-domain clips, {corpus} has {len(old_train)} in train"
                )
            for index in sorted(random.Random(seed).sample(range(len(old_train)), replay)):
                write(old_train[index], "train")
            counts["replay"] = replay
    return counts


def adapt_and_compare(
    base_model: str,
    corpus: str,
    output_dir: str,
    new_attacks: list[str],
    add_experts: int,
    train_args: list[str],
    replay: int = 0,
) -> dict:
    output = Path(output_dir)
    new_domain = output / "new_domain.csv"
    sizes = write_new_domain_csv(corpus, new_attacks, new_domain, replay)
    adapted_dir = output / "adapted"
    train.main(
        [
            "--init_from",
            base_model,
            "--add_experts",
            str(add_experts),
            "--new_pack_name",
            "new_domain",
            "--dataset",
            "csv",
            "--data_root",
            str(new_domain),
            "--output_dir",
            str(adapted_dir),
            "--cpu",
            "true",
            "--log_with",
            "none",
            *train_args,
        ]
    )
    report = {"new_attacks": new_attacks, "new_domain_sizes": sizes, "add_experts": add_experts, "replay": replay}
    for name, model in (("before", base_model), ("after", str(adapted_dir / "model"))):
        old = evaluate_model(model, corpus, "asvspoof5", "dev")["metrics"]
        new = evaluate_model(model, str(new_domain), "csv", "eval")["metrics"]
        report[name] = {"old_domain_dev": old, "new_domain_eval": new}
    (output / "domain_adaptation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("corpus")
    parser.add_argument("--output_dir", default="outputs/domain_adaptation")
    parser.add_argument("--new_attacks", nargs="+", default=["A10", "A11", "A12"])
    parser.add_argument("--add_experts", type=int, default=2)
    parser.add_argument("--replay", type=int, default=0, help="old-domain train clips mixed into the new train split")
    parser.add_argument("--train_args", nargs=argparse.REMAINDER, default=[], help="extra train.py overrides")
    args = parser.parse_args(argv)
    defaults = ["--batch_size", "16", "--learning_rate", "0.002", "--num_epochs", "8", "--crop_samples", "32000"]
    report = adapt_and_compare(
        args.base_model,
        args.corpus,
        args.output_dir,
        args.new_attacks,
        args.add_experts,
        defaults + args.train_args,
        args.replay,
    )
    print("| model | old domain (dev) EER % | minDCF | new domain (eval) EER % | minDCF |\n|---|---|---|---|---|")
    for name in ("before", "after"):
        old, new = report[name]["old_domain_dev"], report[name]["new_domain_eval"]
        print(
            f"| {name} | {100 * old['eer']:.2f} | {old['min_dcf']:.3f} | {100 * new['eer']:.2f} | {new['min_dcf']:.3f} |"
        )


if __name__ == "__main__":
    main()
