"""The model card of a MoLEx model or expert pack, shipped with the model code so that `model.push_to_hub` and
`python -m training.push_to_hub` publish the same full card (one template, one renderer).

Every number comes from a `results` dict (the `results.json` the training script writes); without it the card says
that no evaluation results were recorded and has no `model-index`, rather than inventing numbers. The YAML header is
built with `huggingface_hub.ModelCardData` / `EvalResult`, so the Hub parses it as it parses any other card. The
template is plain `str.format` (remote code may not rely on jinja2); a field it does not know is an error.
"""

import os
import re
import string
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData


TAGS = ["audio-deepfake-detection", "anti-spoofing", "mixture-of-experts", "lora", "peft", "molex"]
SPLIT_TITLES = {
    "dev": "development",
    "eval": "evaluation",
    "eval_known_attacks": "evaluation, attacks seen in training",
    "eval_unseen_attacks": "evaluation, attacks unseen in training",
}
LAYER_PATTERN = re.compile(r"\.layers\.(\d+)\.")
DATASET_NAMES = {"asvspoof5": "ASVspoof 5", "asvspoof2019_la": "ASVspoof 2019 LA", "in_the_wild": "In-the-Wild"}
MINI_CORPUS_MARKER = "mini_corpus.metadata.tsv"  # written by training.corpus.make_mini_corpus at the corpus root
PRIVATE_CONFIG_KEYS = re.compile(r"(^|_)(dir|root|path|file)$")  # local paths: not published


class CardError(ValueError):
    """A results file, model folder or template the card cannot be built from; the message names the field."""


def describe_dataset(results: dict | None) -> tuple[str | None, str | None]:
    """(display name, Hub-style id) of the training corpus. `results.json` records the loader format (e.g.
    "asvspoof5"), which the offline mini corpus shares, so the corpus root is checked for the mini corpus's
    metadata file: a card must never present a mini-corpus model as an ASVspoof 5 one."""
    dataset = (results or {}).get("dataset") or {}
    name = dataset.get("display_name") or dataset.get("name")
    if not name:
        return None, None
    root = dataset.get("root")
    if "mini corpus" in str(name).lower() or (root and (Path(root) / MINI_CORPUS_MARKER).is_file()):
        return "MoLEx mini corpus", "molex-mini-corpus"
    slug = str(name) if str(name) in DATASET_NAMES else re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return DATASET_NAMES.get(str(name), str(name)), dataset.get("hub_id") or slug


def eval_results(results: dict | None) -> list[EvalResult]:
    """One EER (in %) and one minDCF entry per split, for the YAML `model-index`."""
    if not results or not results.get("metrics"):
        return []
    name, dataset_type = describe_dataset(results)
    entries = []
    for split, metrics in results["metrics"].items():
        for metric_type, metric_name, value in (
            ("eer", "EER (%)", round(100 * metrics["eer"], 3)),
            ("min_dcf", "minDCF", round(metrics["min_dcf"], 4)),
        ):
            entries.append(
                EvalResult(
                    task_type="audio-classification",
                    task_name="Audio deepfake detection",
                    dataset_type=dataset_type or "unrecorded",
                    dataset_name=name or "unrecorded dataset",
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=value,
                )
            )
    return entries


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.isabs(name) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def _results_section(results: dict | None) -> str:
    if not results or not results.get("metrics"):
        return (
            "No evaluation results recorded: this card was generated without a `results.json`, so it reports no "
            "numbers. Evaluate the model on your own data before relying on it."
        )
    dataset = describe_dataset(results)[0] or "an unrecorded dataset"
    lines = [
        f"On {dataset} (EER and minDCF as in the ASVspoof 5 challenge; minDCF with P_spoof = 0.05, C_miss = 1, "
        "C_fa = 10, normalised):",
        "",
        "| split | EER (%) | minDCF | actDCF | Cllr (bits) | bona fide | spoof |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, m in results["metrics"].items():
        extra = [f"{m[k]:.4f}" if isinstance(m.get(k), int | float) else "-" for k in ("act_dcf", "cllr")]
        counts = [f"{m[k]:,}" if isinstance(m.get(k), int) else "-" for k in ("num_bonafide", "num_spoof")]
        title = SPLIT_TITLES.get(split, split)
        lines.append(f"| {title} | {100 * m['eer']:.2f} | {m['min_dcf']:.4f} | {' | '.join(extra + counts)} |")
    rows = [
        row
        for row in (results.get("breakdown") or {}).get("eval_by_attack") or []
        if (row.get("attack") or row.get("name")) != "pooled" and isinstance(row.get("eer"), int | float)
    ]
    if rows:
        lines += ["", "Evaluation set, per attack (each attack against all bona fide trials):", ""]
        lines += ["| attack | EER (%) | minDCF |", "|---|---|---|"]
        for row in rows:
            min_dcf = f"{row['min_dcf']:.4f}" if isinstance(row.get("min_dcf"), int | float) else "-"
            lines.append(f"| {row.get('attack') or row.get('name')} | {100 * row['eer']:.2f} | {min_dcf} |")
    return "\n".join(lines)


def _training_data(results: dict | None, backbone_name: str) -> str:
    name, dataset_type = describe_dataset(results)
    if not name:
        return (
            "No record of the training data came with this model (no `results.json`): treat its scores as unvalidated."
        )
    text = f"Trained on {name} only, starting from {backbone_name}."
    if dataset_type == "molex-mini-corpus":
        text += (
            " The MoLEx mini corpus is a small corpus synthesised offline from a few speakers and simple attacks: "
            "this model demonstrates the pipeline and is not a usable detector of real deepfakes."
        )
    return text


def _config_section(results: dict | None, config: dict, backbone_name: str) -> str:
    adapter = config.get("adapter", {})
    rows = {
        "backbone": backbone_name,
        "experts / top-k / rank / alpha": (
            f"{adapter.get('num_experts')} / {adapter.get('top_k')} / {adapter.get('r')} / {adapter.get('lora_alpha')}"
        ),
        "target modules": ", ".join(adapter.get("target_modules", [])),
        "routing": f"{adapter.get('router_granularity')} granularity, {adapter.get('router_scope')} scope",
    }
    if config.get("pooling"):  # a pack has no back-end
        rows["pooling"] = config["pooling"]
    for key, value in sorted(((results or {}).get("config") or {}).items()):
        if isinstance(value, str | int | float | bool) and key not in rows and not PRIVATE_CONFIG_KEYS.search(key):
            rows[key] = value
    if results and isinstance(results.get("wall_time_s"), int | float):
        seconds = results["wall_time_s"]
        rows["training wall time"] = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
    lines = ["| setting | value |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows.items()]
    if not results or not results.get("config"):
        lines += ["", "No training run was recorded with this card; the table shows the model's own config."]
    return "\n".join(lines)


def enrich_index(index: dict, results: dict | None) -> dict:
    """The pack's `index.json` plus, per expert, the layers and module types it covers and (from the analysis
    results) the attacks it specialises in. Extra keys only: `load_experts` reads name and router column."""
    specialisation = (results or {}).get("expert_specialisation") or {}
    experts = []
    for entry in index.get("experts", []):
        modules = entry.get("modules", [])
        layers = sorted({int(m.group(1)) for m in map(LAYER_PATTERN.search, modules) if m})
        entry = {**entry, "layers": layers, "module_types": sorted({path.rsplit(".", 1)[-1] for path in modules})}
        if entry["name"] in specialisation:
            entry["attacks"] = list(specialisation[entry["name"]])
        experts.append(entry)
    return {**index, "experts": experts}


def _expert_table(index: dict) -> str:
    lines = [
        "| expert | pack | router column | rank | alpha | layers | modules | specialises in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in index["experts"]:
        layers = ", ".join(map(str, e["layers"])) or "-"
        attacks = (", ".join(e["attacks"]) or "no attack stands out") if "attacks" in e else "not analysed"
        lines.append(
            f"| `{e['name']}` | {e['pack']} | {e['router_column']} | {e['r']} | {e['lora_alpha']} | {layers} | "
            f"{', '.join(e['module_types'])} ({len(e.get('modules', []))}) | {attacks} |"
        )
    return "\n".join(lines)


CARD_TEMPLATE = """---
{card_data}
---

# {title}

{introduction}

Labels: `0 = spoof`, `1 = bonafide`. Score: `logit[bonafide] - logit[spoof]`, higher means more likely bona fide.

## Evaluation

{results_section}

## Intended use

Research on audio anti-spoofing and deepfake detection: scoring 16 kHz speech clips as bona fide or spoofed,
studying which experts fire for which attacks, and adapting the detector to new domains with extra expert packs.
It is not a tool for deciding, on its own, whether a real person said something: use its scores as one piece of
evidence, with human review, and never as the sole basis of a decision about a person.

## Limitations

- {training_data}
- Scores on real-world audio may differ, often for the worse: other languages, microphones, codecs, noise,
  background music, or synthesis and conversion methods released after the training data was collected.
- The decision threshold matters. The EER threshold of one corpus is not a good threshold for another; calibrate
  on data from the target domain before relying on the `bonafide` / `spoof` label.
- A detector can be attacked: adversarially perturbed or re-recorded spoofs can evade it.
{extra_limitations}

## How to use

{usage}

## Training configuration

{config_section}

## Experts

{expert_table}

{usage_section}

## Citation

```bibtex
@article{{pan2025molex,
  title   = {{MoLEx: Mixture of LoRA Experts in Speech Self-Supervised Models for Audio Deepfake Detection}},
  author  = {{Pan, Zihan and Sailor, Hardik B. and Wu, Jinyang}},
  journal = {{arXiv preprint arXiv:2509.09175}},
  year    = {{2025}}
}}
```
"""
INTRODUCTION = {
    "pack": """An **expert pack** for [MoLEx](https://arxiv.org/abs/2509.09175) audio deepfake (spoofing) detectors: {num_experts}
LoRA expert(s) of rank {rank} on a `{backbone_type}` speech encoder ({backbone_name}), with the router
rows that let a MoLEx model pick them. Load it onto a base MoLEx model built on the same backbone, or load one expert
alone onto the plain backbone with `peft`.""",
    "model": """A [MoLEx](https://arxiv.org/abs/2509.09175) audio deepfake (spoofing) detector: the frozen speech encoder
{backbone_name} (`{backbone_type}`, {num_layers} blocks) carries {num_experts} LoRA experts of rank
{rank} on its {targets} layers; a router picks the top-{top_k} experts {routing}, and a small
back-end turns the hidden states into a bona fide / spoof decision. Only the experts, the routers and the back-end
are trained; the encoder stays frozen.""",
}
USAGE = {
    "pack": """Apply the pack to a base MoLEx model built on the same backbone (only the pack's files are downloaded):

```python
from transformers import AutoModelForAudioClassification

model = AutoModelForAudioClassification.from_pretrained("{base_model_id}", trust_remote_code=True)
model.load_experts("{repo_id}")  # appends the pack's experts and router rows, frozen
```

One expert alone on the plain backbone, with `peft` (that expert at gate 1, no router):

```python
from peft import PeftModel
from transformers import AutoModel

backbone = AutoModel.from_pretrained("{backbone_id}")
expert = PeftModel.from_pretrained(backbone, "{repo_id}", subfolder="{first_expert}")
```""",
    "model": """The whole detector (the model code ships with the weights, hence `trust_remote_code=True`):

```python
from transformers import pipeline

detector = pipeline("audio-classification", model="{repo_id}", trust_remote_code=True)
detector(waveform_16khz_numpy)  # [{{'label': 'bonafide', 'score': ...}}, {{'label': 'spoof', 'score': ...}}]
```

Scores and routing:

```python
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

model = AutoModelForAudioClassification.from_pretrained("{repo_id}", trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained("{repo_id}")
inputs = extractor(waveform_16khz_numpy, sampling_rate=16000, return_tensors="pt")
with torch.inference_mode():
    output = model(**inputs)
score = model.detection_score(output.logits)  # higher = more bona fide
output.expert_usage  # (batch, routers, experts): which experts fired
```

One expert alone on the plain backbone, with `peft` (that expert at gate 1, no router):

```python
from peft import PeftModel
from transformers import AutoModel

backbone = AutoModel.from_pretrained("{backbone_id}")
expert = PeftModel.from_pretrained(backbone, "{repo_id}", subfolder="experts/{first_expert}")
```

An expert pack trained for another domain, applied on top of this model (only the pack's files are downloaded):

```python
model.load_experts("user/expert-pack")  # a pack repo pushed with `--experts-only`, or any MoLEx model repo
```""",
}


def _fill(template: str, fields: dict, where: str) -> str:
    """`template.format(**fields)`, refusing a field the renderer does not provide (a typo would print nothing)."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = sorted(names - set(fields))
    if unknown:
        raise CardError(f"{where}: unknown placeholder(s) {unknown}; known: {sorted(fields)}")
    return template.format(**fields)


def render_card(
    index: dict,
    config: dict,
    results: dict | None,
    repo_id: str,
    is_pack: bool = False,
    figures: dict[str, str] | None = None,
    template: str = CARD_TEMPLATE,
    base_model: str | None = None,
) -> str:
    """The card's markdown. `index` is the (enriched) expert-pack index; `config` the model's `config.json` dict
    (for a pack: `{"adapter": pack adapter_config}`); `figures` maps "expert_usage" / "det" to paths inside the
    repo; `base_model` the MoLEx model repo a pack was trained on (the Hub then lists the pack as its adapter)."""
    figures = figures or {}
    adapter = config.get("adapter", {})
    backbone = index.get("backbone", {})
    backbone_name = backbone.get("name_or_path") or config.get("backbone_name_or_path")
    backbone_id = backbone_name or "BACKBONE_ID"  # in code snippets; the prose says the name was not recorded
    backbone_name = backbone_name or "an SSL backbone whose name was not recorded"
    metrics = sorted({"eer", "min_dcf"}) if results and results.get("metrics") else None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="audio-classification",
        license="apache-2.0",
        tags=TAGS + (["expert-pack"] if is_pack else []),
        datasets=[describe_dataset(results)[1]] if describe_dataset(results)[1] else None,
        metrics=metrics,
        base_model=base_model or (backbone_name if _is_hub_id(backbone_name) else None),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results) or None,
    )
    if figures.get("expert_usage"):
        usage_section = (
            f"![Expert usage per layer]({figures['expert_usage']})\n\nShare of clips routed to each expert, per "
            "layer and attack (from the expert analysis of the evaluation set)."
        )
    else:
        usage_section = "No expert-usage figure was recorded for this model."
    experts = index["experts"]
    kind = "pack" if is_pack else "model"
    fields = {
        "repo_id": repo_id,
        "num_experts": len(experts),
        "rank": adapter.get("r"),
        "top_k": adapter.get("top_k"),
        "targets": ", ".join(f"`{t}`" for t in adapter.get("target_modules", [])),
        "routing": "per clip" if adapter.get("router_granularity") == "utterance" else "per frame",
        "backbone_type": backbone.get("model_type", "unknown"),
        "backbone_name": backbone_name,
        "backbone_id": backbone_id,
        "base_model_id": base_model or "BASE_MOLEX_MODEL",
        "num_layers": backbone.get("num_hidden_layers", "?"),
        "first_expert": experts[0]["name"] if experts else "expert_0",
    }
    fields.update(
        card_data=card_data.to_yaml(),
        title=f"MoLEx expert pack: {repo_id}" if is_pack else f"MoLEx: {repo_id}",
        introduction=_fill(INTRODUCTION[kind], fields, "INTRODUCTION"),
        usage=_fill(USAGE[kind], fields, "USAGE"),
        results_section=_results_section(results)
        + (f"\n\n![DET curves]({figures['det']})" if figures.get("det") and results else ""),
        training_data=_training_data(results, backbone_name),
        extra_limitations=(
            "- WavLM computes attention from the raw projection weights, so with plain `peft` a WavLM expert only "
            "acts through its feed-forward parts; the MoLEx model code applies it everywhere."
            if backbone.get("model_type") == "wavlm"
            else ""
        ),
        config_section=_config_section(results, config, backbone_name),
        expert_table=_expert_table(index),
        usage_section=usage_section,
    )
    content = _fill(template, fields, "card template")
    ModelCard(content)  # parses the YAML header the way the Hub does; raises on a malformed one
    return content
