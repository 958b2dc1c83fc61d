"""Score a trained MoLEx model on any supported corpus split: metrics, official score file, per-attack/codec tables.

    python -m training.evaluate_model MODEL_DIR DATA_ROOT [--dataset asvspoof5] [--split eval] [--output_dir D]

Works for ASVspoof 5, ASVspoof 2019 LA, In-the-Wild (split "eval") and CSV corpora. Every clip is scored through the
model's own scoring path (`model.score_waveforms`: windows of the training crop, batched, the clip score the mean of
its windows; the numbers the pipeline, `molex-score` and the demo give). Scores are calibrated with the model's
stored calibration (`--no_calibration` for raw scores). Also importable: `evaluate_model(...)` -> metrics.
"""

import argparse
import json
from pathlib import Path

from accelerate import Accelerator
from datasets import Dataset

from modeling_molex import MoLExForAudioClassification
from training.data.loaders import load_asvspoof5, load_asvspoof2019_la, load_csv_dataset, load_in_the_wild
from training.metrics.asvspoof_metrics import format_table
from training.metrics.scoring import metrics_for, score_dataset, write_split_reports
from training.trainer.run_setup import subsample


def load_split(dataset: str, root: str, split: str) -> Dataset:
    if dataset == "asvspoof5":
        return load_asvspoof5(root, splits=[split])[split]
    if dataset == "asvspoof2019_la":
        return load_asvspoof2019_la(root, splits=[split])[split]
    corpus = load_in_the_wild(root) if dataset == "in_the_wild" else load_csv_dataset(root)
    if split not in corpus:
        raise ValueError(f"{root}: no split {split!r} (it has {list(corpus)})")
    return corpus[split]


def evaluate_model(
    model_dir: str,
    data_root: str,
    dataset: str = "asvspoof5",
    split: str = "eval",
    output_dir: str | None = None,
    batch_size: int = 8,
    max_samples: int | None = None,
    calibrated: bool = True,
) -> dict:
    model = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    data = subsample(load_split(dataset, data_root, split), max_samples, seed=0)
    accelerator = Accelerator()
    scores = score_dataset(model, data, batch_size, accelerator=accelerator)
    calibration = model.config.calibration if calibrated else None
    metrics = metrics_for(scores, calibration)
    result = {
        "model": str(model_dir),
        "dataset": dataset,
        "data_root": str(data_root),
        "split": split,
        "calibrated": calibration is not None,
        "metrics": metrics,
    }
    if output_dir and accelerator.is_main_process:
        folder = Path(output_dir)
        result["breakdown"] = write_split_reports(folder, split, scores, data, calibration)
        (folder / f"{split}_results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("data_root", help="corpus root (or the CSV file for --dataset csv)")
    parser.add_argument(
        "--dataset", default="asvspoof5", choices=["asvspoof5", "asvspoof2019_la", "in_the_wild", "csv"]
    )
    parser.add_argument("--split", default="eval")
    parser.add_argument("--output_dir", help="write score/key files, tables and <split>_results.json here")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_samples", type=int)
    parser.add_argument("--no_calibration", action="store_true", help="report raw scores' actDCF/Cllr")
    args = parser.parse_args(argv)
    result = evaluate_model(
        args.model_dir,
        args.data_root,
        args.dataset,
        args.split,
        args.output_dir,
        args.batch_size,
        args.max_samples,
        not args.no_calibration,
    )
    metrics = result["metrics"]
    print(
        format_table(
            [
                {
                    "attack": f"{args.split} (pooled)",
                    "n_bonafide": metrics["num_bonafide"],
                    "n_spoof": metrics["num_spoof"],
                    **metrics,
                }
            ]
        )
    )


if __name__ == "__main__":
    main()
