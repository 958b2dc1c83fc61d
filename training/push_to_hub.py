"""Publish a MoLEx model, or just its expert pack, to the Hugging Face Hub in one commit.

    python -m training.push_to_hub MODEL_DIR --repo-id user/name [--private] [--experts-only] [--results FILE]

MODEL_DIR is a folder written by `model.save_pretrained` (or a standalone pack from `model.save_experts`). The
repo receives the model files, `experts/` (each expert a standard PEFT LoRA folder, plus `index.json` naming the
layers, modules, rank and, when analysis data exists, the attacks of each expert) and a `README.md` card rendered
by `modeling_molex/model_card.py` with the numbers of `results.json` (found next to MODEL_DIR, or given with `--results`).
`--experts-only` pushes the expert pack alone, at the repo root, for `model.load_experts("user/pack")`.

The upload itself is the model's own (`modeling_molex/hub_upload.py`, also behind `model.push_to_hub`): ONE
`create_commit` on top of the revision that was checked (`parent_commit`), so a failure at any point (network, auth,
a concurrent push) leaves the repo as it was; local paths (backbone folder, `output_dir`, `data_root`) are
replaced by their last component, and a staged repo that still names a home or temp path is refused. The token
comes from `HF_TOKEN` or `hf auth login`.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx2
from huggingface_hub import CommitInfo, HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from modeling_molex.adapter_config import LEGACY_PACK_CONFIG_NAME, PACK_CONFIG_NAME
from modeling_molex.hub_upload import (
    PushError,
    check_no_local_paths,
    scrub_folder,
    scrub_local_paths,
    upload_folder_in_one_commit,
)
from modeling_molex.safe_files import FolderFiles, UnsafeFileError
from training.hub.model_card import (
    PRIVATE_CONFIG_KEYS,
    CardError,
    describe_dataset,
    enrich_index,
    find_results,
    load_results,
    render_card,
)


MODEL_TYPE = "molex"
CARD_FIGURES = ("expert_usage", "det")  # figures of results.json that the card shows
PACK_FILES = ("index.json", "router.safetensors")  # plus the pack config, see _pack_config_name
# Remote files a push owns: stale ones (e.g. an expert dropped since the last push) are deleted in the same commit.
MANAGED_PREFIXES = {"model": ("experts/", "figures/"), "pack": ("expert_", "figures/")}
MANAGED_SUFFIXES = {"model": (".safetensors", ".py", ".safetensors.index.json"), "pack": ()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PushError(f"{path}: cannot read ({error})") from error


def _pack_dir(model_dir: Path) -> tuple[Path, bool]:
    """(pack folder, whether model_dir is a whole model)."""
    if (model_dir / "config.json").is_file():
        return model_dir / "experts", True
    return model_dir, False


def _pack_config_name(pack_dir: Path) -> str:
    """`molex_pack_config.json`, or `adapter_config.json` in packs saved before the rename."""
    return LEGACY_PACK_CONFIG_NAME if not (pack_dir / PACK_CONFIG_NAME).is_file() else PACK_CONFIG_NAME


def _check_pack(pack_dir: Path) -> dict:
    for name in (_pack_config_name(pack_dir), *PACK_FILES):
        if not (pack_dir / name).is_file():
            raise PushError(f"{pack_dir}: not an expert pack, `{name}` is missing (write it with save_pretrained)")
    index = _read_json(pack_dir / "index.json")
    if index.get("format") != "molex-expert-pack" or not index.get("experts"):
        raise PushError(f"{pack_dir / 'index.json'}: `format` must be 'molex-expert-pack' with a non-empty `experts`")
    files = FolderFiles(pack_dir)
    for entry in index["experts"]:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            try:
                _checked_file(files, f"{entry['name']}/{name}")
            except FileNotFoundError:
                raise PushError(f"{pack_dir}: expert {entry['name']!r} has no {name}") from None
    return index


def _check_model(model_dir: Path) -> dict:
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != MODEL_TYPE:
        raise PushError(f"{model_dir / 'config.json'}: `model_type` is {config.get('model_type')!r}, not 'molex'")
    auto_map = config.get("auto_map") or {}
    if "AutoModelForAudioClassification" not in auto_map:
        raise PushError(f"{model_dir / 'config.json'}: no `auto_map` entry; save the model with save_pretrained")
    for reference in auto_map.values():
        if not (model_dir / f"{reference.split('.')[0]}.py").is_file():
            raise PushError(f"{model_dir}: remote-code file {reference.split('.')[0]}.py (from `auto_map`) missing")
    for name in ("preprocessor_config.json",):
        if not (model_dir / name).is_file():
            raise PushError(f"{model_dir}: `{name}` is missing; save the model with save_pretrained")
    if not any((model_dir / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise PushError(f"{model_dir}: no model.safetensors")
    return config


def public_results(results: dict) -> dict:
    """results.json as published: local paths (corpus root, output dirs) dropped, the corpus named for readers."""
    dataset = {key: value for key, value in (results.get("dataset") or {}).items() if key != "root"}
    if describe_dataset(results)[0]:
        dataset["display_name"] = describe_dataset(results)[0]
    config = {
        key: value for key, value in (results.get("config") or {}).items() if not PRIVATE_CONFIG_KEYS.search(key)
    }
    return {**results, "dataset": dataset, "config": config}


def _find_figure(results_path: Path, relative: str) -> Path:
    """Figures in results.json are relative to the training output dir; the results file may sit there or in the
    model folder below it."""
    for base in (results_path.resolve().parent, results_path.resolve().parent.parent):
        if (base / relative).is_file():
            return base / relative
    raise PushError(f"{results_path}: figure {relative!r} is neither next to it nor one folder up")


def _checked_file(files: FolderFiles, relative: str) -> str:
    """Path of a file of the folder to stage: a regular file inside it only, never a link out of it (such as a token
    beside the model) nor a FIFO that would hang the copy."""
    try:
        return files.file(relative)
    except UnsafeFileError as error:
        raise PushError(f"{error}; nothing was staged or pushed") from error


def _copy_tree_checked(files: FolderFiles, relative: str, destination: Path) -> None:
    """Copy a folder of the model (an expert) file by file, each checked by `_checked_file`."""
    folder = Path(files.root, relative)
    if folder.is_symlink():
        raise PushError(f"{folder} is a symbolic link (to {os.readlink(folder)!r}); nothing was staged or pushed")
    destination.mkdir(parents=True)
    for item in sorted(folder.iterdir()):
        name = f"{relative}/{item.name}"
        if item.is_dir() and not item.is_symlink():
            _copy_tree_checked(files, name, destination / item.name)
        else:
            shutil.copy2(_checked_file(files, name), destination / item.name)


def stage(
    model_dir: str | os.PathLike,
    staging: str | os.PathLike,
    repo_id: str,
    experts_only: bool = False,
    results_path: str | os.PathLike | None = None,
    base_model: str | None = None,
) -> list[str]:
    """Lay out in `staging` exactly what the repo will hold; returns the repo paths, sorted. Checks MODEL_DIR first,
    so a broken folder fails here, before anything touches the network."""
    model_dir, staging = Path(model_dir), Path(staging)
    pack_dir, is_model = _pack_dir(model_dir)
    if not experts_only and not is_model:
        raise PushError(f"{model_dir}: no config.json, so not a model folder (use --experts-only to push a pack)")
    config = _check_model(model_dir) if is_model else {}
    index = _check_pack(pack_dir)
    results = load_results(results_path) if results_path else None
    # What the repo shows of the run: known private keys dropped, any other local path cut to its last component.
    results = scrub_local_paths(public_results(results)) if results is not None else None
    pack_root = staging if experts_only else staging / "experts"
    model_files, pack_files = FolderFiles(model_dir), FolderFiles(pack_dir)
    if not experts_only:
        for item in sorted(model_dir.iterdir()):
            if item.name.startswith(".") or item.name in ("README.md", "results.json", "experts"):
                continue
            if item.is_symlink() or not item.is_dir():  # folders other than experts/ are not published
                shutil.copy2(_checked_file(model_files, item.name), staging / item.name)
    pack_root.mkdir(parents=True, exist_ok=True)
    for name in PACK_FILES:  # index.json is rewritten below, enriched
        shutil.copy2(_checked_file(pack_files, name), pack_root / name)
    shutil.copy2(_checked_file(pack_files, _pack_config_name(pack_dir)), pack_root / PACK_CONFIG_NAME)
    for entry in index["experts"]:
        _copy_tree_checked(pack_files, entry["name"], pack_root / entry["name"])
    scrub_folder(staging)  # local paths out of config.json, train_config.yaml, experts/*, before the card reads them
    config = _read_json(staging / "config.json") if is_model and not experts_only else config
    index = enrich_index(_read_json(pack_root / "index.json"), results)
    (pack_root / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    figures = {}
    if results is not None:
        (staging / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        for name, relative in sorted((results.get("figures") or {}).items()):
            if name in CARD_FIGURES:
                source = _find_figure(Path(results_path), relative)
                (staging / "figures").mkdir(exist_ok=True)
                figures[name] = f"figures/{source.name}"
                shutil.copy2(source, staging / figures[name])
    card_config = config if not experts_only else {"adapter": _read_json(pack_root / PACK_CONFIG_NAME)}
    try:
        card = render_card(
            index,
            card_config,
            results,
            repo_id,
            is_pack=experts_only,
            figures=figures,
            base_model=base_model,
        )
    except CardError as error:
        raise PushError(str(error)) from error
    (staging / "README.md").write_text(card, encoding="utf-8")
    check_no_local_paths(staging, extra_roots=[model_dir.resolve()])
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())


def stage_to_folder(model_dir, folder, repo_id: str, experts_only: bool, results_path, base_model=None) -> list[str]:
    """`stage` into a new `folder`, built in a temporary sibling and renamed into place: whole or absent."""
    folder = Path(folder)
    if folder.exists():
        raise PushError(f"{folder} already exists; give a new folder to --dry-run")
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        paths = stage(model_dir, building, repo_id, experts_only, results_path, base_model)
        os.replace(building, folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return paths


def _remote_json(api: HfApi, repo_id: str, filename: str, revision: str, cache_dir: str) -> dict | None:
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, token=api.token, cache_dir=cache_dir)
    except EntryNotFoundError:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PushError(f"{repo_id}: its {filename} is not valid JSON ({error}); pass --force to overwrite") from error


def _check_remote(api: HfApi, repo_id: str, experts_only: bool, revision: str, remote: set[str], tmp: str) -> None:
    """Refuse to push over a repo holding something else (another model type, a model vs a pack)."""
    config = _remote_json(api, repo_id, "config.json", revision, tmp) if "config.json" in remote else None
    adapter_file = next((n for n in (PACK_CONFIG_NAME, LEGACY_PACK_CONFIG_NAME) if n in remote), None)
    adapter = _remote_json(api, repo_id, adapter_file, revision, tmp) if adapter_file else None
    if experts_only and config is not None:
        raise PushError(
            f"{repo_id} holds a model (model_type {config.get('model_type')!r}); push an expert pack to its own repo "
            "(or pass --force)"
        )
    if experts_only and adapter is not None and adapter.get("peft_type") != "MOLEX":
        raise PushError(f"{repo_id} holds a {adapter.get('peft_type')} adapter, not a MoLEx pack (or pass --force)")
    if not experts_only and config is not None and config.get("model_type") != MODEL_TYPE:
        raise PushError(
            f"{repo_id} already holds a model of type {config.get('model_type')!r}, not 'molex' (or pass --force)"
        )
    if not experts_only and config is None and adapter is not None:
        raise PushError(f"{repo_id} holds an adapter / expert pack, not a model (or pass --force)")


def _is_managed(path: str, kind: str) -> bool:
    return path.startswith(MANAGED_PREFIXES[kind]) or path.endswith(MANAGED_SUFFIXES[kind])


def _sent(error: BaseException) -> bool:
    """Whether the failure happened inside `create_commit` (after which a lost connection may hide a commit that did
    happen), judged from the traceback of `error` and of the errors it wraps."""
    while error is not None:
        trace = error.__traceback__
        while trace is not None:
            if trace.tb_frame.f_code.co_name == "create_commit":
                return True
            trace = trace.tb_next
        error = error.__cause__ or error.__context__
    return False


def _push_failure(error: BaseException, repo_id: str, commit_sent: bool) -> BaseException:
    """A PushError saying what went wrong and what the repo holds now; `error` itself when it is not a Hub or
    network failure (e.g. a RuntimeError of our own making), so real bugs keep their traceback."""
    cause = error  # huggingface_hub wraps LFS upload failures in a RuntimeError
    while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code if cause.response is not None else None
        hint = {
            401: "the token was rejected; check HF_TOKEN / `hf auth login`",
            403: "the token cannot write there (needs a write token with access to the namespace)",
            412: "the repo changed during the push; rerun it",
        }.get(status, "the Hub refused the request")
        return PushError(f"Push to {repo_id} failed: {hint} (HTTP {status}). Nothing was committed.")
    if isinstance(cause, httpx2.HTTPError | OSError):
        state = (
            "the commit was not confirmed: the repo holds either the whole new commit or none of it"
            if commit_sent
            else "nothing was committed"
        )
        return PushError(f"Push to {repo_id} failed: network error ({cause!r}); {state}.")
    return error


def push(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    experts_only: bool = False,
    results_path: str | os.PathLike | None = None,
    force: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    base_model: str | None = None,
    parent_commit: str | None = None,
) -> CommitInfo:
    """Push `model_dir` (or its expert pack) to `repo_id` in one commit; returns that commit's info. With
    `parent_commit` the push only lands if the repo's head is still that commit."""
    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set: pushing needs the network (unset it and retry)")
    token = token or get_token()
    if not token:
        raise PushError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    kind = "pack" if experts_only else "model"

    def check_remote(api: HfApi, repo_id: str, info, remote: set[str]) -> None:
        if not force:
            _check_remote(api, repo_id, experts_only, info.sha, remote, os.path.join(tmp, "cache"))

    with tempfile.TemporaryDirectory(prefix="molex-push-") as tmp:
        staging = Path(tmp) / "repo"
        staging.mkdir()
        stage(model_dir, staging, repo_id, experts_only, results_path, base_model)
        try:
            commit = upload_folder_in_one_commit(
                staging,
                repo_id,
                token=token,
                private=private,
                commit_message=commit_message or f"Upload MoLEx {'expert pack' if experts_only else 'model'}",
                parent_commit=parent_commit,
                is_managed=lambda path: _is_managed(path, kind),
                check_remote=check_remote,
            )
        except (HfHubHTTPError, httpx2.HTTPError, OSError, RuntimeError) as error:
            if isinstance(error, PushError):
                raise
            failure = _push_failure(error, repo_id, commit_sent=_sent(error))
            if failure is error:
                raise
            raise failure from error
    return commit


def push_model(model, repo_id: str, **kwargs) -> CommitInfo:
    """Save a `MoLExForAudioClassification` to a temporary folder and `push` it (the model's own `push_to_hub`)."""
    with tempfile.TemporaryDirectory(prefix="molex-save-") as tmp:
        model.save_pretrained(tmp)
        return push(tmp, repo_id, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="folder written by save_pretrained (or an expert pack with --experts-only)")
    parser.add_argument("--repo-id", required=True, help="user/name or org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--experts-only", action="store_true", help="push only the expert pack, at the repo root")
    parser.add_argument("--results", help="results.json of the run (default: MODEL_DIR/ or its parent, if there)")
    parser.add_argument("--force", action="store_true", help="push even over a repo holding another model type")
    parser.add_argument("--base-model", help="with --experts-only: the MoLEx model repo the pack was trained on")
    parser.add_argument("--commit-message")
    parser.add_argument("--parent-commit", help="push only if the repo's head is still this commit (else HTTP 412)")
    parser.add_argument("--dry-run", metavar="DIR", help="write what would be pushed to DIR (new) and stop")
    args = parser.parse_args(argv)
    results = args.results or find_results(args.model_dir)
    print(f"card numbers from {results}" if results else "no results.json found: the card reports no numbers")
    try:
        if args.dry_run:
            paths = stage_to_folder(
                args.model_dir, args.dry_run, args.repo_id, args.experts_only, results, args.base_model
            )
            print(f"{len(paths)} files staged in {args.dry_run} (nothing pushed):\n  " + "\n  ".join(paths))
            return 0
        commit = push(
            args.model_dir,
            args.repo_id,
            private=args.private or None,
            experts_only=args.experts_only,
            results_path=results,
            force=args.force,
            commit_message=args.commit_message,
            base_model=args.base_model,
            parent_commit=args.parent_commit,
        )
    except (PushError, CardError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.model_dir} to {args.repo_id} in one commit: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
