"""Publishing: `training.push_to_hub` against an in-memory Hub behind `huggingface_hub`'s own HTTP client (an
`httpx2.MockTransport` installed with `set_client_factory`), so the real create_repo / model_info / create_commit
code runs, LFS upload included, and the tests see exactly which files each commit carried. Also the model card."""

import json
import re

import httpx2
import numpy as np
import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config
from fake_hub import TOKEN, FakeHub, hub  # noqa: F401  (the fixture)
from huggingface_hub import ModelCard, constants
from matplotlib.image import imsave

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from training import push_to_hub
from training.hub.model_card import CardError, load_results, render_card


def save_model(folder, num_experts: int = 4, seed: int = 0, family: str = "wav2vec2") -> MoLExForAudioClassification:
    torch.manual_seed(seed)
    adapter = MoLExAdapterConfig(num_experts=num_experts, top_k=2, r=4)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter))
    randomize_experts(model.eval(), seed=seed)
    model.save_pretrained(folder)
    return model


def write_results(output_dir, with_figure: bool = True, mini_corpus: bool = True) -> str:
    """results.json as training.train + training.main_job write it: in the output dir and in its model folder,
    figures relative to the output dir, the loader format as dataset name, the corpus root on disk."""
    corpus = output_dir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if mini_corpus:
        (corpus / "mini_corpus.metadata.tsv").write_text("utt_id\tsource\n")
    metrics = {
        "dev": {"eer": 0.0123, "min_dcf": 0.0345, "act_dcf": 0.05, "cllr": 0.21, "num_bonafide": 10, "num_spoof": 90},
        "eval": {"eer": 0.0556, "min_dcf": 0.151, "act_dcf": 0.2, "cllr": 0.4, "num_bonafide": 20, "num_spoof": 180},
        "eval_unseen_attacks": {"eer": 0.1, "min_dcf": 0.3, "act_dcf": 0.4, "cllr": 0.9, "attacks": ["A17", "A18"]},
    }
    by_attack = [
        {"attack": "pooled", "n_bonafide": 20, "n_spoof": 180, "eer": 0.0556, "min_dcf": 0.151},
        {"attack": "A17", "n_bonafide": 20, "n_spoof": 90, "eer": 0.02, "min_dcf": 0.05},
        {"attack": "A18", "n_bonafide": 20, "n_spoof": 0, "eer": None, "min_dcf": None},
    ]
    results = {
        "metrics": metrics,
        "breakdown": {"eval_by_attack": by_attack, "eval_by_codec": []},
        "dataset": {"name": "asvspoof5", "root": str(corpus)},
        "config": {"learning_rate": 1e-4, "epochs": 3, "output_dir": "/home/me/secret_runs", "data_root": str(corpus)},
        "wall_time_s": 360.0,
        "expert_specialisation": {"expert_0": [], "expert_3": ["A12", "A14"]},
        "figures": {},
    }
    if with_figure:
        for relative in ("analysis/expert_usage_eval.png", "scores/det.png"):
            (output_dir / relative).parent.mkdir(exist_ok=True)
            imsave(output_dir / relative, np.linspace(0, 1, 64).reshape(8, 8))
        results["figures"] = {"expert_usage": "analysis/expert_usage_eval.png", "det": "scores/det.png"}
    for folder in (output_dir, output_dir / "model"):
        if folder.is_dir():
            (folder / "results.json").write_text(json.dumps(results))
    return str(output_dir / "results.json")


def local_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_uploads_exactly_the_model_files_in_one_commit(hub, tmp_path, capsys):
    save_model(tmp_path / "run" / "model")
    write_results(tmp_path / "run")
    code = push_to_hub.main([str(tmp_path / "run" / "model"), "--repo-id", "me/molex-tiny", "--private"])
    assert code == 0, capsys.readouterr().err
    assert hub.repos["me/molex-tiny"]["private"] is True
    [commit] = hub.commits("me/molex-tiny")
    saved = local_files(tmp_path / "run" / "model")
    experts = sorted(p for p in saved if p.startswith("experts/"))
    assert len(experts) == 3 + 2 * 4  # adapter_config, index, router + 4 PEFT folders of 2 files
    python_files = sorted(p for p in saved if p.endswith(".py"))
    assert {"modeling_molex.py", "configuration_molex.py", "experts_io.py"} <= set(python_files)
    expected = [
        "README.md",
        "config.json",
        "figures/det.png",
        "figures/expert_usage_eval.png",
        "model.safetensors",
        "preprocessor_config.json",
        "results.json",
        *python_files,
        *experts,
    ]
    assert commit["added"] == sorted(expected) and commit["deleted"] == []
    remote = hub.head("me/molex-tiny")["files"]
    for path in ("model.safetensors", "config.json", "experts/expert_2/adapter_model.safetensors"):
        assert remote[path] == saved[path], path
    assert remote["figures/det.png"] == (tmp_path / "run" / "scores" / "det.png").read_bytes()
    published = json.loads(remote["results.json"])
    assert published["metrics"] == json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert published["dataset"] == {"name": "asvspoof5", "display_name": "MoLEx mini corpus"}
    assert published["config"] == {"learning_rate": 1e-4, "epochs": 3}  # no local paths on the Hub
    index = json.loads(remote["experts/index.json"])
    by_name = {e["name"]: e for e in index["experts"]}
    assert by_name["expert_3"]["attacks"] == ["A12", "A14"] and by_name["expert_0"]["attacks"] == []
    assert "attacks" not in by_name["expert_1"]
    assert by_name["expert_0"]["layers"] == [0, 1] and "q_proj" in by_name["expert_0"]["module_types"]
    # The card: the Hub's own parser reads EER in % and minDCF per split, straight from results.json.
    card = ModelCard(remote["README.md"].decode())
    values = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values == {
        ("dev", "eer"): 1.23,
        ("dev", "min_dcf"): 0.0345,
        ("eval", "eer"): 5.56,
        ("eval", "min_dcf"): 0.151,
        ("eval_unseen_attacks", "eer"): 10.0,
        ("eval_unseen_attacks", "min_dcf"): 0.3,
    }
    assert {r.dataset_type for r in card.data.eval_results} == {"molex-mini-corpus"}
    assert card.data.pipeline_tag == "audio-classification" and card.data.library_name == "transformers"
    assert "| evaluation | 5.56 | 0.1510 |" in card.text and "| A17 | 2.00 | 0.0500 |" in card.text
    assert "| pooled |" not in card.text and "| A18 |" not in card.text  # no bona fide/spoof pair: no number
    assert "![Expert usage per layer](figures/expert_usage_eval.png)" in card.text
    assert "![DET curves](figures/det.png)" in card.text and "secret_runs" not in card.text
    assert "Trained on MoLEx mini corpus only" in card.text and "not a usable detector" in card.text
    assert "| `expert_0` |" in card.text and "no attack stands out" in card.text
    assert "{{" not in card.content and "{%" not in card.content
    # Only the token-bearing write calls and the reads they need; the LFS blobs went up before the commit.
    methods = [(m, p) for m, p in hub.requests if not p.startswith(("/upload/", "/api/agent-harnesses"))]
    assert methods[0] == ("POST", "/api/repos/create") and methods[-1][1].endswith("/commit/main")


def test_repush_deletes_dropped_experts_and_skips_unchanged_files(hub, tmp_path):
    save_model(tmp_path / "four", num_experts=4)
    assert push_to_hub.main([str(tmp_path / "four"), "--repo-id", "me/molex"]) == 0
    save_model(tmp_path / "two", num_experts=2)
    assert push_to_hub.main([str(tmp_path / "two"), "--repo-id", "me/molex"]) == 0
    first, second = hub.commits("me/molex")
    assert second["deleted"] == sorted(
        f"experts/expert_{i}/{name}" for i in (2, 3) for name in ("adapter_config.json", "adapter_model.safetensors")
    )
    assert "modeling_molex.py" in first["added"] and "modeling_molex.py" not in second["added"]  # unchanged
    assert "model.safetensors" in second["added"]
    remote = hub.head("me/molex")["files"]
    assert sorted(p for p in remote if p.startswith("experts/expert_")) == sorted(
        p for p in local_files(tmp_path / "two") if p.startswith("experts/expert_")
    )
    assert "No evaluation results recorded" in remote["README.md"].decode()
    assert ModelCard(remote["README.md"].decode()).data.eval_results is None


def test_experts_only_pushes_the_pack_at_the_repo_root(hub, tmp_path):
    model = save_model(tmp_path / "base")
    pack = model.add_experts(2, pack_name="domain_b")
    model.save_experts(tmp_path / "pack", names=[pack])
    argv = [str(tmp_path / "pack"), "--repo-id", "me/pack", "--experts-only", "--base-model", "me/molex"]
    assert push_to_hub.main(argv) == 0
    [commit] = hub.commits("me/pack")
    experts = [f"expert_{i}/{n}" for i in (4, 5) for n in ("adapter_config.json", "adapter_model.safetensors")]
    assert commit["added"] == sorted(
        ["README.md", "index.json", "molex_pack_config.json", "router.safetensors", *experts]
    )
    card = ModelCard(hub.head("me/pack")["files"]["README.md"].decode())
    assert not re.search(r"\{\{|\{%|None\b", card.text)
    assert "expert-pack" in card.data.tags and 'subfolder="expert_4"' in card.text
    assert card.data.base_model == "me/molex" and 'from_pretrained("me/molex", trust_remote_code=True)' in card.text
    # A model folder with --experts-only pushes its experts/ the same way.
    assert push_to_hub.main([str(tmp_path / "base"), "--repo-id", "me/base-pack", "--experts-only"]) == 0
    assert "expert_3/adapter_model.safetensors" in hub.commits("me/base-pack")[0]["added"]


def test_no_token_fails_clearly_before_any_request(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    save_model(tmp_path / "model")
    assert push_to_hub.main([str(tmp_path / "model"), "--repo-id", "me/molex"]) == 1
    error = capsys.readouterr().err
    assert "HF_TOKEN" in error and "hf auth login" in error
    assert hub.requests == []


def test_offline_mode_is_refused_clearly(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    save_model(tmp_path / "model")
    assert push_to_hub.main([str(tmp_path / "model"), "--repo-id", "me/molex"]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err and hub.requests == []


def test_rejected_token_is_reported(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    save_model(tmp_path / "model")
    assert push_to_hub.main([str(tmp_path / "model"), "--repo-id", "me/molex"]) == 1
    assert "token was rejected" in capsys.readouterr().err and "me/molex" not in hub.repos


@pytest.mark.parametrize(
    ("existing", "flags", "message"),
    [
        ({"config.json": b'{"model_type": "wav2vec2"}'}, [], "model of type 'wav2vec2'"),
        ({"adapter_config.json": b'{"peft_type": "LORA"}'}, [], "holds an adapter"),
        ({"config.json": b'{"model_type": "molex"}'}, ["--experts-only"], "holds a model"),
    ],
)
def test_repo_holding_something_else_is_refused_unless_forced(hub, tmp_path, capsys, existing, flags, message):
    hub.add_repo("me/taken", existing)
    save_model(tmp_path / "model")
    argv = [str(tmp_path / "model"), "--repo-id", "me/taken", *flags]
    assert push_to_hub.main(argv) == 1
    assert message in capsys.readouterr().err and hub.commits("me/taken") == []
    assert push_to_hub.main([*argv, "--force"]) == 0
    assert len(hub.commits("me/taken")) == 1


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (("POST", r"/commit/"), httpx2.ConnectError("connection reset")),
        (("PUT", r"/upload/"), 403),
        (("POST", r"/preupload/"), httpx2.ReadTimeout("timed out")),
    ],
    ids=["commit-connection-lost", "lfs-upload-forbidden", "preupload-timeout"],
)
def test_network_failure_leaves_the_repo_untouched(hub, tmp_path, capsys, monkeypatch, failure, message):
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # skip retry back-off
    hub.add_repo("me/molex", {"README.md": b"old card\n"})
    before = hub.head("me/molex")
    save_model(tmp_path / "model")
    hub.fail[failure] = message
    assert push_to_hub.main([str(tmp_path / "model"), "--repo-id", "me/molex"]) == 1
    error = capsys.readouterr().err
    assert "failed" in error and ("Nothing was committed" in error or "none of it" in error)
    assert hub.head("me/molex") is before and hub.commits("me/molex") == []


def test_dry_run_stages_the_repo_locally_without_a_token(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    save_model(tmp_path / "run" / "model")
    write_results(tmp_path / "run", with_figure=False, mini_corpus=False)
    argv = [str(tmp_path / "run" / "model"), "--repo-id", "me/molex", "--dry-run", str(tmp_path / "staged")]
    assert push_to_hub.main(argv) == 0
    staged = local_files(tmp_path / "staged")
    assert str(len(staged)) + " files staged" in capsys.readouterr().out and hub.requests == []
    assert {"README.md", "results.json", "model.safetensors", "experts/expert_3/adapter_model.safetensors"} <= set(
        staged
    )
    assert "No expert-usage figure" in staged["README.md"].decode()
    assert "Trained on ASVspoof 5 only" in staged["README.md"].decode()
    assert push_to_hub.main(argv) == 1  # never writes into an existing folder


def test_concurrent_push_is_not_overwritten_blindly(hub, tmp_path, capsys):
    hub.add_repo("me/molex", {})
    save_model(tmp_path / "model")
    other = {"README.md": b"someone else's push\n"}
    hub.fail[("POST", r"/preupload/")] = lambda: hub._commit("me/molex", other, {"added": ["README.md"]})
    assert push_to_hub.main([str(tmp_path / "model"), "--repo-id", "me/molex"]) == 1
    assert "the repo changed during the push" in capsys.readouterr().err
    assert hub.head("me/molex")["files"] == other  # the other push stands, ours did not land on top of it


def test_broken_model_folder_fails_before_the_network(hub, tmp_path, capsys):
    save_model(tmp_path / "model")
    (tmp_path / "model" / "experts" / "expert_1" / "adapter_model.safetensors").unlink()
    assert push_to_hub.main([str(tmp_path / "model"), "--repo-id", "me/molex"]) == 1
    assert "expert 'expert_1' has no adapter_model.safetensors" in capsys.readouterr().err
    assert hub.requests == []


def test_models_own_push_to_hub_sends_every_expert_folder_in_one_commit(hub):
    torch.manual_seed(0)
    model = MoLExForAudioClassification(
        MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=MoLExAdapterConfig(num_experts=2, r=2))
    )
    info = model.push_to_hub("me/own-push", private=True)
    [commit] = hub.commits("me/own-push")
    assert info.oid == hub.head("me/own-push")["sha"]
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_molex.py"}
    expected |= {
        f"experts/expert_{i}/{name}" for i in (0, 1) for name in ("adapter_config.json", "adapter_model.safetensors")
    }
    expected |= {"experts/molex_pack_config.json", "experts/index.json", "experts/router.safetensors"}
    assert expected <= set(commit["added"])


def test_push_model_pushes_a_model_object_with_its_experts(hub):
    torch.manual_seed(0)
    model = MoLExForAudioClassification(
        MoLExConfig(backbone_config=tiny_backbone_config("hubert"), adapter=MoLExAdapterConfig(num_experts=2, r=2))
    )
    info = push_to_hub.push_model(model, "me/from-object")
    [commit] = hub.commits("me/from-object")
    assert info.oid == hub.head("me/from-object")["sha"] and info.commit_url.endswith(info.oid)
    assert "experts/expert_1/adapter_model.safetensors" in commit["added"] and "README.md" in commit["added"]


# ----- the card alone --------------------------------------------------------------------------------------------


def _card_inputs(tmp_path):
    save_model(tmp_path / "model", family="wavlm")
    index = json.loads((tmp_path / "model" / "experts" / "index.json").read_text())
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    return index, config


def test_card_without_results_says_so_and_has_no_model_index(tmp_path):
    from training.hub.model_card import enrich_index

    index, config = _card_inputs(tmp_path)
    content = render_card(enrich_index(index, None), config, None, "me/molex")
    card = ModelCard(content)
    assert card.data.eval_results is None and "model-index" not in content
    assert "No evaluation results recorded" in card.text and "No record of the training data" in card.text
    assert "WavLM computes attention from the raw projection weights" in card.text
    assert not re.search(r"\{\{|\{%|None\b", card.text)


def test_card_template_with_an_unknown_placeholder_raises(tmp_path):
    from training.hub.model_card import enrich_index

    index, config = _card_inputs(tmp_path)
    template = "---\n{card_data}\n---\n\n{eer_of_the_day}\n"
    with pytest.raises(CardError, match=r"unknown placeholder\(s\) \['eer_of_the_day'\]"):
        render_card(enrich_index(index, None), config, None, "me/molex", template=template)


def test_bad_results_field_is_named(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"metrics": {"eval": {"eer": "5.5%", "min_dcf": 0.1}}}))
    with pytest.raises(CardError, match=r"metrics\.eval\.eer"):
        load_results(path)
    path.write_text(json.dumps({"metrics": {"eval": {"eer": 5.5, "min_dcf": 0.1}}}))
    with pytest.raises(CardError, match="fraction"):
        load_results(path)


# ----- no local paths on the Hub (issue 10 item 10) --------------------------------------------------------------


def _local_roots(*extra) -> list[str]:
    """The machine's home and temp folders (as given and resolved) and any extra folders, with a trailing slash."""
    import os
    import tempfile

    roots = {os.path.expanduser("~"), tempfile.gettempdir(), *map(str, extra)}
    roots |= {os.path.realpath(root) for root in roots}
    return sorted(root.rstrip("/") + "/" for root in roots if root.strip("/"))


def _leaks(files: dict[str, bytes], roots: list[str]) -> list[str]:
    return [f"{path}: {root}" for path, content in files.items() for root in roots if root.encode() in content]


def _model_from_local_backbone(backbone_dir, folder):
    torch.manual_seed(0)
    model = MoLExForAudioClassification.from_backbone(backbone_dir, adapter=MoLExAdapterConfig(num_experts=2, r=2))
    model.save_pretrained(folder)
    return model


def test_dry_run_push_holds_no_local_path(tiny_backbone_dirs, tmp_path, monkeypatch):
    from pathlib import Path

    from training.trainer.config import TrainConfig

    model_dir = tmp_path / "run" / "model"
    _model_from_local_backbone(tiny_backbone_dirs["wav2vec2"], model_dir)
    write_results(tmp_path / "run")
    config = TrainConfig(
        backbone=tiny_backbone_dirs["wav2vec2"],
        data_root=str(Path.home() / "corpora" / "ASVspoof5"),
        output_dir=str(tmp_path / "run"),
    )
    config.save(model_dir / "train_config.yaml")
    roots = _local_roots(tmp_path)
    saved = local_files(model_dir)
    assert _leaks(saved, roots), "the test must start from a folder that holds local paths"
    assert push_to_hub.main([str(model_dir), "--repo-id", "me/molex", "--dry-run", str(tmp_path / "staged")]) == 0
    staged = local_files(tmp_path / "staged")
    assert "train_config.yaml" in staged and "experts/expert_0/adapter_config.json" in staged
    assert _leaks(staged, roots) == []
    published = json.loads(staged["config.json"])
    assert published["backbone_name_or_path"] == "wav2vec2"  # the folder's name: a reader still sees which
    assert published["model_type"] == "molex" and published["adapter"]["num_experts"] == 2  # the rest untouched
    assert "starting from wav2vec2" in staged["README.md"].decode()


def test_hub_ids_and_relative_paths_are_kept(tmp_path):
    from modeling_molex.hub_upload import scrub_local_paths

    value = {"a": "facebook/wav2vec2-base", "b": ["outputs/run", "/tmp/x/run", "~/data"], "c": 3, "d": None}
    assert scrub_local_paths(value) == {
        "a": "facebook/wav2vec2-base",
        "b": ["outputs/run", "run", "data"],
        "c": 3,
        "d": None,
    }


def test_models_own_push_sends_no_local_path(hub, tiny_backbone_dirs, tmp_path):
    model = _model_from_local_backbone(tiny_backbone_dirs["hubert"], tmp_path / "model")
    model.push_to_hub("me/own")
    assert _leaks(hub.head("me/own")["files"], _local_roots(tmp_path)) == []


def test_models_own_push_and_the_cli_publish_the_same_full_card(hub, tmp_path):
    model = save_model(tmp_path / "model", num_experts=2)
    argv = [str(tmp_path / "model"), "--repo-id", "me/same", "--dry-run", str(tmp_path / "staged")]
    assert push_to_hub.main(argv) == 0
    model.push_to_hub("me/same")
    card = hub.head("me/same")["files"]["README.md"].decode()
    assert card == (tmp_path / "staged" / "README.md").read_text()
    assert "## Experts" in card and "| `expert_1` |" in card and "## Training configuration" in card


def test_models_own_push_honours_parent_commit(hub, tmp_path):
    from huggingface_hub.errors import HfHubHTTPError

    hub.add_repo("me/raced", {"README.md": b"v1\n"})
    seen = hub.head("me/raced")["sha"]
    hub._commit("me/raced", {"README.md": b"someone else's v2\n"}, {"added": ["README.md"]})
    model = save_model(tmp_path / "model", num_experts=2)
    with pytest.raises(HfHubHTTPError, match="412"):
        model.push_to_hub("me/raced", parent_commit=seen)
    assert hub.head("me/raced")["files"] == {"README.md": b"someone else's v2\n"}
    assert model.push_to_hub("me/raced", parent_commit=hub.head("me/raced")["sha"]).oid == hub.head("me/raced")["sha"]


def test_local_paths_in_results_are_stripped_not_published(tmp_path):
    save_model(tmp_path / "run" / "model", num_experts=2)
    results_path = write_results(tmp_path / "run", with_figure=False)
    results = json.loads(open(results_path).read())
    results["config"]["backbone"] = "/home/me/models/wav2vec2-xls-r-300m"
    results["config"]["init_from"] = str(tmp_path / "base_model")
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    argv = [str(tmp_path / "run" / "model"), "--repo-id", "me/m", "--results", results_path]
    assert push_to_hub.main([*argv, "--dry-run", str(tmp_path / "staged")]) == 0
    staged = local_files(tmp_path / "staged")
    assert _leaks(staged, [*_local_roots(tmp_path), "/home/me/"]) == []
    published = json.loads(staged["results.json"])
    assert (
        published["config"]["backbone"] == "wav2vec2-xls-r-300m" and published["config"]["init_from"] == "base_model"
    )
    assert (
        "| backbone | " in staged["README.md"].decode()
        and "Trained on MoLEx mini corpus" in staged["README.md"].decode()
    )
