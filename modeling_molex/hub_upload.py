"""`model.push_to_hub`: everything `save_pretrained` writes, `experts/expert_<i>/` included, in ONE commit.

transformers' own upload only walks one folder level (it fails on the expert folders after the repo was created),
and a multi-commit upload can leave a repo half-pushed. Here the folder is staged locally, then sent with a single
`create_commit`: the repo gets all of it or none of it. The full model card (results, expert table, figures) is
rendered by `python -m training.push_to_hub`; this path writes a short card unless one is passed in.
"""

import tempfile
from pathlib import Path


def _short_card(model) -> str:
    config = model.config
    adapter = config.adapter
    backbone = config.backbone_name_or_path or config.backbone_config.model_type
    return (
        "---\nlibrary_name: transformers\npipeline_tag: audio-classification\n"
        "tags: [audio-deepfake-detection, anti-spoofing, lora, mixture-of-experts, molex]\n---\n\n"
        f"# MoLEx on {backbone}\n\n"
        f"Mixture of LoRA Experts ({adapter.num_experts} experts of rank {adapter.r}, top-{adapter.top_k}, "
        f"{adapter.router_granularity} routing) in a frozen `{backbone}` for bona fide vs spoof speech.\n"
        "Score: `logits[:, 1] - logits[:, 0]`, higher = more bona fide. Each expert in `experts/` is a standard PEFT "
        "LoRA adapter.\n\n```python\nfrom transformers import pipeline\n"
        'detector = pipeline("audio-classification", model="REPO_ID", trust_remote_code=True)\n```\n\n'
        "No evaluation results are recorded in this card (publish with `python -m training.push_to_hub` to include "
        "them).\n"
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
    model_card: str | None = None,
):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)  # before any network call: a broken model never creates a repo
        readme = Path(folder, "README.md")
        readme.write_text(model_card or _short_card(model).replace("REPO_ID", repo_id))
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(Path(folder).rglob("*"))
            if path.is_file() and not path.name.startswith(".")
        ]
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload MoLEx model ({len(operations)} files)",
            revision=revision,
            create_pr=create_pr,
        )
