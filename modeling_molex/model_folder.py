"""`save_pretrained` of a MoLEx model: the whole folder at once, with one save id, its experts and its routing
signatures.

    config.json, model.safetensors (or shards + index), remote code   transformers' save, stamped with the save id
    preprocessor_config.json                                          the model's feature extractor
    experts/                                                          the expert pack, same save id
    routing_signatures.json                                           the signatures the model scores novelty with

The folder is built in a hidden sibling and swapped in whole (atomic_saves.py): a crash leaves the previous save
or the new one. Files the user keeps beside a model (results.json, README.md, figures/ ...) are carried over; the
files a save owns (weights of any earlier layout, configs, experts/, signatures) are not, so no stale file of an
earlier save stays beside new weights.

The routing signatures are saved as the model uses them (extended after domain adaptation, see novelty.py), with
`dropped` naming what was not carried over; signatures that do not fit the model are not saved. Each of these is
said in a logged warning.
"""

import json
import logging
import os
import shutil
from collections.abc import Callable

from .atomic_saves import (
    carry_over,
    check_replaceable,
    content_save_id,
    make_staging,
    resolve_target,
    stamp_model_weights,
    swap_into_place,
)
from .experts_io import save_expert_pack
from .novelty import SIGNATURES_FILE, signatures_file_contents
from .safe_files import FolderFiles, read_json_object
from .scoring import load_model_signatures


logger = logging.getLogger(__name__)

EXPERTS_FOLDER = "experts"
OWNED_NAMES = ("config.json", "preprocessor_config.json", "generation_config.json", EXPERTS_FOLDER, SIGNATURES_FILE)
OWNED_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
# A top-level adapter_config.json would make transformers take the folder for a PEFT adapter: never carried over.
OWNED_NAMES += ("adapter_config.json",)


def owned_by_model_save(name: str) -> bool:
    return name in OWNED_NAMES or name.endswith(OWNED_SUFFIXES)


def is_model_folder(path: str) -> bool:
    """Whether `path` holds a MoLEx model save (config.json of model_type "molex"): a save may replace it."""
    try:
        return read_json_object(FolderFiles(path).file("config.json")).get("model_type") == "molex"
    except (OSError, ValueError):
        return False


def write_model_folder(model, save_directory: str | os.PathLike, save_weights: Callable[[str], None]) -> None:
    """Write `model` into `save_directory` as described above; `save_weights(folder)` is transformers' own save."""
    target = resolve_target(save_directory)
    check_replaceable(target, is_model_folder, "MoLEx models")
    signatures = _signatures_to_save(model)
    staging = make_staging(target, ".molex-save-")
    try:
        save_weights(staging)
        # After transformers' save, which adds `auto_map` to the config: the id of equal models is then equal.
        config = {key: value for key, value in model.config.to_dict().items() if key != "_name_or_path"}
        save_id = content_save_id(model.state_dict(), config, signatures)
        stamp_model_weights(staging, save_id)
        model.feature_extractor().save_pretrained(staging)
        save_expert_pack(model, os.path.join(staging, EXPERTS_FOLDER), None, save_id)
        if signatures is not None:
            with open(os.path.join(staging, SIGNATURES_FILE), "w", encoding="utf-8") as handle:
                json.dump(signatures, handle, indent=2)
                handle.write("\n")
        elif os.path.lexists(os.path.join(target, SIGNATURES_FILE)):
            logger.warning(
                "%s is not kept: it describes the routing of the weights saved there before, not of this model's",
                os.path.join(target, SIGNATURES_FILE),
            )
        carry_over(target, staging, owned_by_model_save)
        swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _signatures_to_save(model) -> dict | None:
    """The model's routing signatures as it scores with them, ready to write; None (with a warning when some
    existed) when there are none it can use."""
    try:
        signatures = load_model_signatures(model)
    except ValueError as error:
        logger.warning("%s not saved: %s", SIGNATURES_FILE, error)
        return None
    if signatures is None:
        return None
    adapter = model.config.adapter
    contents = signatures_file_contents(signatures, model.router_names, adapter.expert_packs, adapter.top_k)
    if signatures.extended_experts:
        logger.warning(
            "%s saved extended: derived before experts %s existed, their columns are 0 (the usage they had then). "
            "Re-run the expert analysis on this model to derive them anew.",
            SIGNATURES_FILE,
            ", ".join(signatures.extended_experts),
        )
    if signatures.unknown_fields:
        logger.warning(
            "%s: fields %s not carried over (not routing-signatures fields; listed under `dropped`)",
            SIGNATURES_FILE,
            ", ".join(signatures.unknown_fields),
        )
    return contents
