"""The Hub path: a saved folder loads with `trust_remote_code` in a fresh process that never imports this project,
gives the same logits, and serves `pipeline("audio-classification")` on numpy audio."""

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import random_audio, randomize_experts, run_in_fresh_process, tiny_backbone_config
from safetensors.torch import save_file

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForAudioClassification, pipeline

    results = {}
    for folder in sys.argv[1:]:
        reference = load_file(folder + "/../reference.safetensors")
        model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(reference["audio"]).logits
        classifier = pipeline("audio-classification", model=folder, trust_remote_code=True)
        clip = reference["clip"].numpy()
        predictions = classifier(clip)
        scored = model.score_waveform(clip, 16000)  # the pipeline scores through the model's own path
        results[folder] = {
            "module": type(model).__module__,
            "max_abs_diff": float((logits - reference["logits"]).abs().max()),
            "pipeline": {p["label"]: p["score"] for p in predictions},
            "expected": {"spoof": 1 - scored.bonafide_probability, "bonafide": scored.bonafide_probability},
            "pipeline_class": type(classifier).__name__,
            "frozen_backbone": not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n),
        }
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.mark.slow
def test_remote_code_loads_in_a_fresh_process_with_identical_logits(tmp_path):
    folders = []
    for family in ("wav2vec2", "hubert", "wavlm", "whisper"):
        torch.manual_seed(0)
        config = MoLExConfig(
            backbone_config=tiny_backbone_config(family), adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
        )
        model = MoLExForAudioClassification(config).eval()
        randomize_experts(model)
        folder = tmp_path / family / "model"
        model.save_pretrained(folder)
        audio = random_audio()
        with torch.no_grad():
            logits = model(audio).logits
        clip = torch.from_numpy(np.random.default_rng(0).standard_normal(8000).astype(np.float32))
        save_file({"audio": audio, "logits": logits, "clip": clip}, str(tmp_path / family / "reference.safetensors"))
        folders.append(str(folder))

    completed = run_in_fresh_process(FRESH_PROCESS_SCRIPT, folders, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS"))
    results = json.loads(line.removeprefix("RESULTS"))
    for folder in folders:
        result = results[folder]
        assert result["module"].startswith("transformers_modules."), "must run the shipped remote code"
        # same weights and code; another process may pick kernels that sum in another order (~1e-9 apart)
        assert result["max_abs_diff"] < 1e-6
        assert set(result["pipeline"]) == {"spoof", "bonafide"}
        assert result["pipeline_class"] == "MoLExAudioClassificationPipeline"
        for label, score in result["expected"].items():
            assert (
                abs(result["pipeline"][label] - score) < 1e-5
            )  # float32 summation order; any real divergence is far larger
        assert result["frozen_backbone"]
