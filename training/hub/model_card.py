"""Model cards for pushed MoLEx models and expert packs: the training side (results.json) of the renderer that ships
with the model code (`modeling_molex/model_card.py`, so `model.push_to_hub` renders the same card).

    python -m training.hub.model_card MODEL_DIR [--results results.json] [--repo-id user/name] [--output README.md]
"""

import argparse
import json
import os
from pathlib import Path
from typing import Any

from modeling_molex.model_card import (
    PRIVATE_CONFIG_KEYS,
    CardError,
    describe_dataset,
    enrich_index,
    eval_results,
    render_card,
)


__all__ = [
    "PRIVATE_CONFIG_KEYS",
    "CardError",
    "describe_dataset",
    "enrich_index",
    "eval_results",
    "find_results",
    "load_results",
    "render_card",
]


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check `results.json`: metric values must be numbers (fractions, as the training script writes)."""
    try:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise CardError(f"{path}: cannot read results ({error})") from error
    if not isinstance(results, dict) or not isinstance(results.get("metrics", {}), dict):
        raise CardError(f"{path}: expected an object with a `metrics` object")
    for split, metrics in results.get("metrics", {}).items():
        for key in ("eer", "min_dcf"):
            value = metrics.get(key) if isinstance(metrics, dict) else None
            if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
                raise CardError(f"{path}: `metrics.{split}.{key}` must be a number, got {value!r}")
        if not 0.0 <= metrics["eer"] <= 1.0:
            raise CardError(f"{path}: `metrics.{split}.eer` is {metrics['eer']} but must be a fraction in [0, 1]")
    return results


def find_results(model_dir: str | os.PathLike) -> str | None:
    """`results.json` in the model folder, else in its parent (the training output dir), else None."""
    for folder in (Path(model_dir), Path(model_dir).resolve().parent):
        if (folder / "results.json").is_file():
            return str(folder / "results.json")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a folder written by save_pretrained (or an expert pack folder)")
    parser.add_argument("--results", help="results.json of the training run (default: none, no numbers)")
    parser.add_argument("--repo-id", default="user/molex", help="repo id used in the card's code snippets")
    parser.add_argument("--output", default="-", help="where to write the card (default: stdout)")
    args = parser.parse_args(argv)
    pack_dir = Path(args.model_dir) / "experts"
    is_pack = not pack_dir.is_dir()
    pack_dir = Path(args.model_dir) if is_pack else pack_dir
    index = json.loads((pack_dir / "index.json").read_text(encoding="utf-8"))
    pack_config = next(
        n
        for n in ("molex_pack_config.json", "adapter_config.json")
        if (pack_dir / n).is_file() or n == "adapter_config.json"
    )
    config_path = pack_dir / pack_config if is_pack else Path(args.model_dir) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config = {"adapter": config} if is_pack else config
    results = load_results(args.results) if args.results else None
    card = render_card(enrich_index(index, results), config, results, args.repo_id, is_pack=is_pack)
    if args.output == "-":
        print(card)
    else:
        Path(args.output).write_text(card, encoding="utf-8")


if __name__ == "__main__":
    main()
