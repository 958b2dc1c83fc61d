"""The uploader's pieces one at a time (issue 19's mutation audit): which path part is published, which files are
scrubbed and how they are rewritten, which files go up, which remote files a push deletes, and that every argument
of `push_to_hub` reaches the one commit. `HfApi` is replaced by a recorder: no HTTP (test_push_to_hub.py runs the
same code against a fake Hub end to end)."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_push_to_hub import save_model, write_results

from modeling_molex import hub_upload
from modeling_molex.hub_upload import PushError
from modeling_molex.model_card import enrich_index, render_card
from training.hub.model_card import load_results


@pytest.mark.parametrize(
    ("value", "published"),
    [
        ("/home/me/runs/model/", "model"),
        ("/home/me/runs/model", "model"),
        ("/data/BOX/", "BOX"),
        ("~/data/", "data"),
        ("C:\\Users\\me\\xls-r\\", "xls-r"),
        ("\\\\server\\share\\wavlm", "wavlm"),
        ("/", "local"),
        ("C:\\", "C:"),
    ],
)
def test_public_path_is_the_last_component_of_any_spelling(value, published):
    assert hub_upload.public_path(value) == published


def _write_scrubbable(folder: Path) -> dict:
    """Files that name local paths in every format the scrubber knows, and some it must leave alone."""
    local = {"backbone_name_or_path": "/home/me/models/wav2vec2", "hub": "facebook/wav2vec2-base", "n": 2}
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(local))
    (folder / "escaped.json").write_text('{"output_dir": "\\/tmp\\/run\\/out", "seed": 1}')  # JSON, not YAML
    (folder / "sub" / "train.yml").write_text("zeta: /home/me/corpus\nalpha: 1\n")
    (folder / "sub" / "train.yaml").write_text("output_dir: ~/runs/x\n")
    (folder / "clean.json").write_text('{"a":  "outputs/run"}')
    (folder / "notes.txt").write_text("/home/me/secret\n")
    return local


def test_scrub_folder_rewrites_json_and_yaml_files_that_name_local_paths(tmp_path):
    local = _write_scrubbable(tmp_path)
    changed = hub_upload.scrub_folder(tmp_path)
    assert changed == ["config.json", "escaped.json", "sub/train.yaml", "sub/train.yml"]
    clean = {**local, "backbone_name_or_path": "wav2vec2"}
    assert (tmp_path / "config.json").read_text() == json.dumps(clean, indent=2) + "\n"
    assert json.loads((tmp_path / "escaped.json").read_text()) == {"output_dir": "out", "seed": 1}
    assert (tmp_path / "sub" / "train.yml").read_text() == "zeta: corpus\nalpha: 1\n"  # key order kept
    assert yaml.safe_load((tmp_path / "sub" / "train.yaml").read_text()) == {"output_dir": "x"}
    assert (tmp_path / "clean.json").read_text() == '{"a":  "outputs/run"}'  # untouched, byte for byte
    assert (tmp_path / "notes.txt").read_text() == "/home/me/secret\n"  # not parsed: left for local_path_leaks


def test_without_pyyaml_only_json_is_rewritten(tmp_path, monkeypatch):
    _write_scrubbable(tmp_path)
    monkeypatch.setattr(hub_upload, "yaml", None)
    assert hub_upload.scrub_folder(tmp_path) == ["config.json", "escaped.json"]
    assert (tmp_path / "sub" / "train.yml").read_text() == "zeta: /home/me/corpus\nalpha: 1\n"


def test_files_to_upload_skips_hidden_files_and_folders(tmp_path):
    for name in (".a", ".git/config", "b.txt", "experts/.lock", "experts/e0/adapter.safetensors", "z.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert hub_upload.files_to_upload(tmp_path) == ["b.txt", "experts/e0/adapter.safetensors", "z.json"]


def test_files_to_upload_refuses_a_linked_folder_and_a_fifo_naming_them(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    os.symlink(tmp_path / "outside", tmp_path / "model" / "experts")
    with pytest.raises(PushError, match=r"model/experts is a symbolic link \(to '.*outside'\); nothing was pushed"):
        hub_upload.files_to_upload(tmp_path / "model")
    os.unlink(tmp_path / "model" / "experts")
    os.mkfifo(tmp_path / "model" / "pipe")
    with pytest.raises(PushError, match=r"model/pipe is not a regular file; nothing was pushed"):
        hub_upload.files_to_upload(tmp_path / "model")


@pytest.mark.parametrize(
    ("path", "managed"),
    [
        ("experts/expert_3/adapter_config.json", True),
        ("figures/det.png", True),
        ("model.safetensors", True),
        ("modeling_molex.py", True),
        ("model.safetensors.index.json", True),
        ("README.md", False),
        ("notes.json", False),
        ("my_experts/x.txt", False),
    ],
)
def test_a_model_push_owns_its_experts_figures_weights_and_code(path, managed):
    assert hub_upload.is_managed_by_model_push(path) is managed


class RecordingApi:
    """`HfApi` as the uploader uses it; every call is recorded in `calls`."""

    calls: list = []
    remote = ["README.md", "notes.txt", "experts/expert_9/adapter_model.safetensors", "old.safetensors", "b.txt"]

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(repo_id=f"me/{repo_id.split('/')[-1]}")

    def model_info(self, repo_id, **kwargs):
        self.calls.append(("model_info", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(sha="head-sha", siblings=[SimpleNamespace(rfilename=p) for p in self.remote])

    def create_commit(self, repo_id, **kwargs):
        self.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        return "commit-info"


@pytest.fixture
def api(monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub_upload, "HfApi", RecordingApi)
    return RecordingApi


def _operations(call: dict) -> list[tuple[str, str]]:
    return [(type(op).__name__, op.path_in_repo) for op in call["operations"]]


def test_an_upload_with_the_defaults_commits_on_the_head_it_read(tmp_path, api):
    for name in ("b.txt", "experts/expert_0/adapter_model.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    seen = []
    result = hub_upload.upload_folder_in_one_commit(tmp_path, "molex", check_remote=lambda *a: seen.append(a))
    assert result == "commit-info"
    (init, create, info, commit) = api.calls
    assert init == ("init", {"token": None})
    assert create == ("create_repo", {"repo_id": "molex", "private": None, "exist_ok": True})
    assert info == ("model_info", {"repo_id": "me/molex", "revision": None})
    [(checked_api, checked_repo, checked_info, remote)] = seen
    assert isinstance(checked_api, RecordingApi) and checked_repo == "me/molex" and checked_info.sha == "head-sha"
    assert remote == set(RecordingApi.remote)
    name, kwargs = commit
    assert (name, kwargs["repo_id"], kwargs["commit_message"]) == (
        "create_commit",
        "me/molex",
        "Upload MoLEx (2 files)",
    )
    assert (kwargs["revision"], kwargs["create_pr"], kwargs["parent_commit"]) == (None, False, "head-sha")
    assert _operations(kwargs) == [
        ("CommitOperationAdd", "b.txt"),
        ("CommitOperationAdd", "experts/expert_0/adapter_model.safetensors"),
        ("CommitOperationDelete", "experts/expert_9/adapter_model.safetensors"),
        ("CommitOperationDelete", "old.safetensors"),
    ]  # README.md and notes.txt are not the push's to delete


def test_an_upload_passes_token_revision_pr_message_and_parent_on(tmp_path, api):
    (tmp_path / "b.txt").write_text("x")
    hub_upload.upload_folder_in_one_commit(
        tmp_path,
        "me/molex",
        token="hf_x",
        private=True,
        revision="dev",
        create_pr=True,
        commit_message="mine",
        parent_commit="parent-sha",
        is_managed=None,
    )
    assert api.calls[0] == ("init", {"token": "hf_x"}) and api.calls[1][1]["private"] is True
    assert api.calls[2] == ("model_info", {"repo_id": "me/molex", "revision": "dev"})
    kwargs = api.calls[3][1]
    assert (kwargs["revision"], kwargs["create_pr"], kwargs["commit_message"]) == ("dev", True, "mine")
    assert kwargs["parent_commit"] == "parent-sha" and _operations(kwargs) == [("CommitOperationAdd", "b.txt")]


class StubModel:
    """A model whose save writes a folder saved beforehand, plus a file naming a local path."""

    def __init__(self, saved: Path, leak: str | None = None):
        self.saved, self.leak = saved, leak

    def save_pretrained(self, folder):
        for path in self.saved.rglob("*"):
            if path.is_file():
                target = Path(folder, path.relative_to(self.saved))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
        config = json.loads(Path(folder, "config.json").read_text())
        Path(folder, "config.json").write_text(json.dumps({**config, "backbone_name_or_path": "/home/me/wav2vec2"}))
        if self.leak:
            Path(folder, "notes.txt").write_text(self.leak)


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    """Runs `push_model_in_one_commit` with the upload replaced by a recorder of its arguments and the staged files."""
    save_model(tmp_path / "saved", num_experts=2)
    calls = []

    def upload(folder, repo_id, **kwargs):
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
        calls.append({"folder": Path(folder), "repo_id": repo_id, "files": files, **kwargs})
        return "commit-info"

    monkeypatch.setattr(hub_upload, "upload_folder_in_one_commit", upload)

    def push(*args, leak=None, **kwargs):
        assert (
            hub_upload.push_model_in_one_commit(StubModel(tmp_path / "saved", leak), *args, **kwargs) == "commit-info"
        )
        return calls[-1]

    push.calls = calls
    return push


def test_a_model_push_stages_scrubs_renders_the_card_and_sends_the_defaults(pushed, tmp_path):
    call = pushed("me/molex")
    assert call["folder"].name.startswith("molex-push-") and not call["folder"].exists()  # removed afterwards
    assert call["repo_id"] == "me/molex"
    assert {k: v for k, v in call.items() if k not in ("folder", "repo_id", "files")} == {
        "token": None,
        "private": None,
        "revision": None,
        "create_pr": False,
        "commit_message": "Upload MoLEx model",
        "parent_commit": None,
    }
    assert json.loads(call["files"]["config.json"])["backbone_name_or_path"] == "wav2vec2"
    config, index = json.loads(call["files"]["config.json"]), json.loads(call["files"]["experts/index.json"])
    assert call["files"]["README.md"].decode() == render_card(enrich_index(index, None), config, None, "me/molex")


def test_a_model_push_passes_every_argument_on_and_uses_the_given_card(pushed):
    call = pushed(
        "me/molex",
        commit_message="first",
        private=True,
        token="hf_x",
        revision="dev",
        create_pr=True,
        parent_commit="parent-sha",
        model_card="# My card\n\nÜber alles.\n",
    )
    assert call["files"]["README.md"] == "# My card\n\nÜber alles.\n".encode()
    assert (call["token"], call["private"], call["revision"], call["create_pr"]) == ("hf_x", True, "dev", True)
    assert (call["commit_message"], call["parent_commit"]) == ("first", "parent-sha")


def test_a_model_push_with_results_publishes_their_numbers(pushed, tmp_path):
    write_results(tmp_path / "run", with_figure=False)
    results = load_results(tmp_path / "run" / "results.json")
    files = pushed("me/molex", results=results)["files"]
    config, index = json.loads(files["config.json"]), json.loads(files["experts/index.json"])
    card = files["README.md"].decode()
    assert card == render_card(enrich_index(index, results), config, results, "me/molex")
    assert "5.56" in card and "No evaluation results recorded" not in card


def test_write_card_hands_results_and_template_options_to_the_renderer(tmp_path):
    save_model(tmp_path / "model", num_experts=2)
    write_results(tmp_path / "run", with_figure=False)
    results = load_results(tmp_path / "run" / "results.json")
    card = hub_upload.write_card(tmp_path / "model", "me/pack", results, is_pack=True)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    index = json.loads((tmp_path / "model" / "experts" / "index.json").read_text())
    assert card == render_card(enrich_index(index, results), config, results, "me/pack", is_pack=True)
    assert card != render_card(enrich_index(index, None), config, results, "me/pack", is_pack=True)
    assert card != render_card(enrich_index(index, results), config, results, "me/pack")
    assert (tmp_path / "model" / "README.md").read_text(encoding="utf-8") == card


def test_a_model_push_refuses_a_local_path_it_cannot_scrub_before_any_upload(pushed):
    with pytest.raises(PushError, match=r"refusing to publish local paths \(nothing was pushed\): notes\.txt: /"):
        pushed("me/molex", leak=f"trained in {Path.home()}/runs\n")
    assert pushed.calls == []


def test_the_leak_scan_reads_safetensors_headers_every_text_file_and_the_extra_roots(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    home = tmp_path / "home"
    (home / "me").mkdir(parents=True)
    linked_home = tmp_path / "linked_home"
    linked_home.symlink_to(home, target_is_directory=True)
    monkeypatch.setattr(hub_upload.os.path, "expanduser", lambda path: str(linked_home / "me"))
    monkeypatch.setattr(hub_upload.tempfile, "gettempdir", lambda: "/nonexistent-temp")  # tmp_path is under /tmp
    folder = tmp_path / "model"
    folder.mkdir()
    # a local path in the metadata of a safetensors header (not in any text file)
    save_file({"w": torch.zeros(2)}, folder / "a.safetensors", metadata={"source": f"{home}/me/run/weights"})
    (folder / "b.bin").write_bytes(b"binary, skipped")  # sorted before a leaking text file: the scan goes on
    (folder / "c.json").write_text(json.dumps({"data": "/srv/corpus/flac_T"}))
    leaks = hub_upload.local_path_leaks(folder, extra_roots=["/srv/corpus/"])  # an extra root with a trailing /
    # home seen through its resolved spelling too, the JSON through the extra root
    assert f"a.safetensors: {home}/me/" in leaks and "c.json: /srv/corpus/" in leaks
    assert not any(leak.startswith("b.bin") for leak in leaks)
    with pytest.raises(PushError, match="c.json: /srv/corpus/"):
        hub_upload.check_no_local_paths(folder, extra_roots=["/srv/corpus"])
    assert hub_upload.local_path_leaks(folder) == [f"a.safetensors: {home}/me/"]  # without the extra root
