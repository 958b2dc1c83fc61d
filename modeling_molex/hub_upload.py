"""The one Hub uploader of MoLEx, shared by `model.push_to_hub` and `python -m training.push_to_hub`.

- ONE commit. transformers' own upload only walks one folder level (it fails on the expert folders after the repo
  was created), and a multi-commit upload (`upload_folder` with hf_xet splits large folders) can leave a repo
  half-pushed. Here a staged folder goes up in a single `create_commit`: the repo gets all of it or none of it.
- `parent_commit`: the commit is made on top of the revision that was checked (or the one the caller names), so a
  push that raced another one fails with HTTP 412 instead of overwriting it blindly.
- Stale files a push owns (an expert dropped since the last push) are deleted in the same commit.
- No local paths. `save_pretrained` records the paths it was given (a backbone folder under the home or temp
  folder, `output_dir`, `data_root`); `scrub_folder` replaces each absolute path in the JSON / YAML files by its
  last component before upload (hub ids and relative paths stay as given), and `local_path_leaks` refuses a folder
  in which any such path is left.
- The full model card (`model_card.py`), the same whichever way the model is pushed.
"""

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from .model_card import enrich_index, render_card


try:  # pyyaml comes with transformers; without it a YAML file is only checked for local paths, not rewritten
    import yaml
except ImportError:  # pragma: no cover
    yaml = None


LOCAL_PATH = re.compile(r"^(?:~|/|[A-Za-z]:[\\/]|\\\\)")  # POSIX, home-relative, Windows drive or UNC
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt", ".py", ".csv", ".tsv")
MODEL_MANAGED_PREFIXES = ("experts/", "figures/")  # remote files a model push owns, deleted when no longer pushed
MODEL_MANAGED_SUFFIXES = (".safetensors", ".py", ".safetensors.index.json")


class PushError(RuntimeError):
    """A push that cannot or did not happen; the message says why and what the repo now holds."""


def public_path(value: str) -> str:
    """What of a local path may be published: its last component (e.g. the backbone's folder name)."""
    return os.path.basename(value.replace("\\", "/").rstrip("/")) or "local"


def scrub_local_paths(value):
    """`value` (JSON-like) with every absolute or home-relative path string replaced by `public_path`."""
    if isinstance(value, dict):
        return {key: scrub_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_local_paths(item) for item in value]
    if isinstance(value, str) and LOCAL_PATH.match(value):
        return public_path(value)
    return value


def scrub_folder(folder: str | os.PathLike) -> list[str]:
    """Rewrite, in place, the JSON and YAML files of `folder` whose values hold local paths; returns their paths."""
    changed = []
    for path in sorted(Path(folder).rglob("*")):
        if (
            not path.is_file()
            or path.suffix not in (".json", ".yaml", ".yml")
            or (yaml is None and path.suffix != ".json")
        ):
            continue
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        clean = scrub_local_paths(data)
        if clean != data:
            if path.suffix == ".json":
                path.write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
            else:
                path.write_text(yaml.safe_dump(clean, sort_keys=False), encoding="utf-8")
            changed.append(path.relative_to(folder).as_posix())
    return changed


def local_roots(*extra: str | os.PathLike) -> list[str]:
    """The machine's home and temp folders (as given and resolved) and `extra`, each ending in a separator."""
    roots = {os.path.expanduser("~"), tempfile.gettempdir(), *map(str, extra)}
    roots |= {os.path.realpath(root) for root in roots}
    return sorted(root.rstrip("/") + "/" for root in roots if root.strip("/"))


def local_path_leaks(folder: str | os.PathLike, extra_roots=()) -> list[str]:
    """`file: root` for each text file (and safetensors header) of `folder` that names a path under `local_roots`."""
    roots = [root.encode() for root in local_roots(*extra_roots)]
    leaks = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES:
            content = path.read_bytes()
        elif path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                content = handle.read(8 + int.from_bytes(handle.read(8), "little"))  # the JSON header only
        else:
            continue
        leaks += [f"{path.relative_to(folder).as_posix()}: {root.decode()}" for root in roots if root in content]
    return leaks


def check_no_local_paths(folder: str | os.PathLike, extra_roots=()) -> None:
    leaks = local_path_leaks(folder, extra_roots)
    if leaks:
        raise PushError("refusing to publish local paths (nothing was pushed): " + "; ".join(leaks[:5]))


def write_card(folder: str | os.PathLike, repo_id: str, results: dict | None = None, **card_kwargs) -> str:
    """Render the full card of the model saved in `folder` (its config.json and experts/index.json) into README.md."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    index = json.loads((folder / "experts" / "index.json").read_text(encoding="utf-8"))
    card = render_card(enrich_index(index, results), config, results, repo_id, **card_kwargs)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return card


def files_to_upload(folder: Path) -> list[str]:
    """Repo paths of the regular files of `folder`, hidden ones excepted. A link or special file is refused (PushError
    naming it) before any request: a link could send a file from outside the folder, such as a token."""
    paths = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted([*names, *(f for f in folders if os.path.islink(os.path.join(root, f)))]):
            path = Path(root, name)
            if name.startswith("."):
                continue
            if path.is_symlink():
                raise PushError(f"{path} is a symbolic link (to {os.readlink(path)!r}); nothing was pushed")
            if not path.is_file():
                raise PushError(f"{path} is not a regular file; nothing was pushed")
            paths.append(path.relative_to(folder).as_posix())
    return sorted(paths)


def is_managed_by_model_push(path: str) -> bool:
    return path.startswith(MODEL_MANAGED_PREFIXES) or path.endswith(MODEL_MANAGED_SUFFIXES)


def upload_folder_in_one_commit(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: bool | str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    parent_commit: str | None = None,
    is_managed: Callable[[str], bool] | None = is_managed_by_model_push,
    check_remote: Callable[[HfApi, str, object, set[str]], None] | None = None,
):
    """Send every file of `folder` (hidden ones excepted) to `repo_id` in one commit; returns its `CommitInfo`.

    The commit's parent is `parent_commit`, or else the head of `revision` read before the commit: if the repo moved
    meanwhile the Hub answers 412 and nothing is written. Remote files that `is_managed` claims but `folder` no longer
    holds are deleted in the same commit. `check_remote(api, repo_id, repo_info, remote_paths)` may refuse the push
    (raise) after the repo was read and before anything is written."""
    folder = Path(folder)
    paths = files_to_upload(folder)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    info = api.model_info(repo_id, revision=revision)
    remote = {sibling.rfilename for sibling in info.siblings or []}
    if check_remote is not None:
        check_remote(api, repo_id, info, remote)
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in paths]
    if is_managed is not None:
        operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(remote - set(paths)) if is_managed(p)]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload MoLEx ({len(paths)} files)",
        revision=revision,
        create_pr=create_pr,
        parent_commit=parent_commit or info.sha,
    )


def push_model_in_one_commit(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    parent_commit: str | None = None,
    model_card: str | None = None,
    results: dict | None = None,
):
    """`model.push_to_hub`: save, strip local paths, render the full card (with the numbers of `results`, a
    results.json dict, when given; `model_card` replaces it) and upload in one commit."""
    with tempfile.TemporaryDirectory(prefix="molex-push-") as folder:
        model.save_pretrained(folder)  # before any network call: a broken model never creates a repo
        scrub_folder(folder)
        if model_card is not None:
            Path(folder, "README.md").write_text(model_card, encoding="utf-8")
        else:
            write_card(folder, repo_id, results)
        check_no_local_paths(folder)
        return upload_folder_in_one_commit(
            folder,
            repo_id,
            token=token,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or "Upload MoLEx model",
            parent_commit=parent_commit,
        )
