"""The download side of publishing, for real: push a model and an expert pack to the fake Hub, let
`huggingface_hub` download them into a cache the way it does from huggingface.co, then load them in a fresh process
that never imports this project, with `HF_HUB_OFFLINE=1`: the whole model through AutoModel + trust_remote_code,
one expert through plain peft (`subfolder="experts/<name>"`), and an expert pack through `load_experts`."""

import json
import textwrap

import pytest
import torch
from conftest import random_audio, randomize_experts, run_in_fresh_process
from fake_hub import FakeHub, hub  # noqa: F401  (the fake Hub and its fixture)
from huggingface_hub import snapshot_download
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModel

from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification
from modeling_molex.experts_io import HUB_PACK_PATTERNS
from training import push_to_hub


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from huggingface_hub import snapshot_download
    from transformers import AutoModel, AutoModelForAudioClassification

    backbone_dir, local_model_dir, reference_path = sys.argv[1:]
    reference = load_file(reference_path)
    audio = reference["audio"]
    diff = lambda a, b: float((a - b).abs().max())
    results = {}

    model = AutoModelForAudioClassification.from_pretrained("me/molex", trust_remote_code=True).eval()
    results["module"] = type(model).__module__
    with torch.no_grad():
        results["model"] = diff(model(audio).logits, reference["logits"])
        results["new_packs"] = model.load_experts("me/pack")
        results["with_pack"] = diff(model(audio).logits, reference["pack_logits"])
    results["expert_packs"] = model.config.adapter.expert_packs

    # peft 0.21.2 offline doubles `subfolder` for Hub ids ("experts/expert_1/experts/expert_1/..."), so offline
    # one expert loads from a local folder: the repo checkout, or the cached snapshot snapshot_download returns.
    snapshot = snapshot_download("me/molex", allow_patterns=["experts/expert_1/*"])
    for name, source in (("peft_snapshot", snapshot), ("peft_local", local_model_dir)):
        backbone = AutoModel.from_pretrained(backbone_dir).eval()
        expert = PeftModel.from_pretrained(backbone, source, subfolder="experts/expert_1").eval()
        with torch.no_grad():
            results[name] = diff(expert(audio).last_hidden_state, reference["peft_hidden"])
    print("RESULTS" + json.dumps(results))
    """
)


def _resolved_files(fake: FakeHub, repo_id: str) -> set[str]:
    prefix = f"/{repo_id}/resolve/"
    return {path[len(prefix) :].split("/", 1)[1] for method, path in fake.requests if path.startswith(prefix)}


@pytest.mark.slow
def test_pushed_model_expert_and_pack_load_from_the_hub_cache_offline(hub, tiny_backbone_dirs, tmp_path):  # noqa: F811
    backbone_dir = tiny_backbone_dirs["wav2vec2"]
    torch.manual_seed(0)
    model = MoLExForAudioClassification.from_backbone(
        backbone_dir, adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    ).eval()
    randomize_experts(model, seed=3)
    model_dir = tmp_path / "run" / "model"
    model.save_pretrained(model_dir)
    audio = random_audio()
    with torch.no_grad():
        logits = model(audio).logits

    # A domain pack: two new experts on top of the base ones, the only parameters that changed.
    model.add_experts(2, pack_name="domain_b")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("lora_B.1", "weight.1")):  # the new experts and their router rows
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2.0)
        pack_logits = model(audio).logits
    model.save_experts(tmp_path / "pack", names=["domain_b"])
    assert not torch.allclose(pack_logits, logits)

    vanilla = AutoModel.from_pretrained(backbone_dir).eval()
    expert = PeftModel.from_pretrained(vanilla, str(model_dir / "experts" / "expert_1")).eval()
    with torch.no_grad():
        peft_hidden = expert(audio).last_hidden_state
        with expert.disable_adapter():
            assert not torch.allclose(expert(audio).last_hidden_state, peft_hidden)  # the expert does something

    assert push_to_hub.main([str(model_dir), "--repo-id", "me/molex"]) == 0
    assert push_to_hub.main([str(tmp_path / "pack"), "--repo-id", "me/pack", "--experts-only"]) == 0

    # Through the Hub, in this process: a pack download fetches the pack's files and nothing else ...
    hub.requests.clear()
    snapshot_download("me/molex", allow_patterns=HUB_PACK_PATTERNS)
    fetched = _resolved_files(hub, "me/molex")
    assert fetched == {p.relative_to(model_dir).as_posix() for p in (model_dir / "experts").rglob("*") if p.is_file()}
    # ... and load_experts("user/pack") applies a pack repo, cached for the offline process below.
    base = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    hub.requests.clear()
    assert base.load_experts("me/pack") == ["domain_b"]
    assert "README.md" not in _resolved_files(hub, "me/pack")
    with torch.no_grad():
        torch.testing.assert_close(base(audio).logits, pack_logits)
    # One expert straight from the Hub repo with plain peft, as a user online would load it.
    online = PeftModel.from_pretrained(
        AutoModel.from_pretrained(backbone_dir), "me/molex", subfolder="experts/expert_1"
    ).eval()
    with torch.no_grad():
        assert torch.equal(online(audio).last_hidden_state, peft_hidden)
    snapshot_download("me/molex")  # the whole model repo, as from_pretrained("me/molex") would fetch it

    reference = tmp_path / "reference.safetensors"
    save_file({"audio": audio, "logits": logits, "pack_logits": pack_logits, "peft_hidden": peft_hidden}, reference)
    completed = run_in_fresh_process(
        FRESH_PROCESS_SCRIPT,
        [backbone_dir, str(model_dir), str(reference)],
        tmp_path,
        {"HF_HUB_CACHE": str(tmp_path / "hub_cache")},  # where the fixture pointed huggingface_hub's cache
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS"))
    results = json.loads(line.removeprefix("RESULTS"))
    assert results["module"].startswith("transformers_modules."), "must run the code shipped in the repo"
    assert results["model"] < 1e-6  # another process may sum in another order (~1e-9 apart)
    assert results["new_packs"] == ["domain_b"] and results["expert_packs"] == {"base": 4, "domain_b": 2}
    assert results["with_pack"] < 1e-5
    assert results["peft_snapshot"] < 1e-5 and results["peft_local"] < 1e-5  # hidden states of magnitude ~1-10
