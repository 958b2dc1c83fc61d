"""Data hygiene of SSL pretraining: no dev or eval prompt key and no dev/eval-only attack method enters the pool."""

import pytest
from ssl_fixtures import keys_of_split, write_corpus_metadata
from test_mini_corpus import _packages_or_skip

from training.corpus.attacks import ATTACK_BY_LABEL, ATTACKS
from training.corpus.make_mini_corpus import plan
from training.encoders.ssl_pool import (
    TRAINING_ATTACKS,
    PoolClip,
    PoolHygieneError,
    check_pool_hygiene,
    held_out_keys,
    plan_extra_clips,
)


HELD_OUT_ONLY_METHODS = {a.method for a in ATTACKS if a.split != "train" and a.known_as is None}


def test_the_real_pool_plan_is_disjoint_from_every_dev_and_eval_clip_of_the_corpus():
    _packages_or_skip()
    groups, _ = plan({"per_attack": 100, "bonafide": 200, "enrolment": 2}, 0.5, seed=0)
    held_out = [g.clip for g in groups if g.clip.split != "train"]
    held_out_keys = {c.key for c in held_out}
    held_out_sources = {c.source for c in held_out if c.source}
    tasks = plan_extra_clips(extra_bonafide=True, spoofs_per_attack=30, use_spoofs=True, coded_fraction=0.3, seed=0)
    assert len(tasks) > 1000 and {t["attack"] for t in tasks} == {"bonafide", "A01", "A02", "A04"}
    assert not {t["key"] for t in tasks} & held_out_keys
    assert not {t["source"] for t in tasks if t["source"]} & held_out_sources
    assert {t["attack"] for t in tasks} - {"bonafide"} <= set(TRAINING_ATTACKS)
    assert (
        not {ATTACK_BY_LABEL[t["attack"]].method for t in tasks if t["attack"] != "bonafide"} & HELD_OUT_ONLY_METHODS
    )
    for task in tasks:
        if task["attack"] != "bonafide":
            assert task["variant"] in ATTACK_BY_LABEL[task["attack"]].variants, task


def _clip(key: str, attack: str = "bonafide", variant: str = "-") -> PoolClip:
    return PoolClip("flac/x.flac", "extra_spoof", attack, variant, key, 1.0)


def test_hygiene_check_refuses_dev_keys_held_out_attacks_and_foreign_voices(tmp_path):
    corpus = write_corpus_metadata(tmp_path / "corpus", [])
    train_key, dev_key, eval_key = (
        keys_of_split("train", 1)[0],
        keys_of_split("dev", 1)[0],
        keys_of_split("eval", 1)[0],
    )
    check_pool_hygiene([_clip(train_key), _clip(train_key, "A01", "m1"), _clip(train_key, "A04", "lpc10")], corpus)
    with pytest.raises(PoolHygieneError, match=dev_key):
        check_pool_hygiene([_clip(train_key), _clip(dev_key)], corpus)
    with pytest.raises(PoolHygieneError, match=eval_key):
        check_pool_hygiene([_clip(eval_key, "A01", "m1")], corpus)
    with pytest.raises(PoolHygieneError, match="A10 is not a training attack"):
        check_pool_hygiene([_clip(train_key, "A10", "slt_hts")], corpus)
    with pytest.raises(PoolHygieneError, match="'m2' is not one of A01"):  # A07's voice, an eval attack
        check_pool_hygiene([_clip(train_key, "A01", "m2")], corpus)


def _metadata(corpus, rows: list[tuple[str, str, str]]):
    """A provenance file with (file, split, prompt_key) rows (the other columns as the corpus writes them)."""
    corpus.mkdir(parents=True, exist_ok=True)
    header = "file\tsplit\tattack\tvariant\tlang\tprompt_key\tsource\ttext\tcodec\tcodec_q\tenrolment\n"
    lines = [f"{file}\t{split}\tbonafide\t-\ten\t{key}\t-\t-\t-\t-\tfalse\n" for file, split, key in rows]
    (corpus / "mini_corpus.metadata.tsv").write_text(header + "".join(lines))
    return corpus


def test_held_out_keys_are_the_prompt_keys_of_dev_and_eval_rows(tmp_path):
    train, dev, evaluation = keys_of_split("train", 3)
    corpus = _metadata(tmp_path, [("T_1", "train", train), ("D_1", "dev", dev), ("E_1", "eval", evaluation)])
    assert held_out_keys(corpus) == {dev, evaluation}


def test_a_key_the_corpus_holds_out_is_refused_even_when_its_hash_says_train(tmp_path):
    """The corpus's own split wins: a corpus built with other split bounds (or a reused key) held this key out."""
    kept, held = keys_of_split("train", 2)
    for split in ("dev", "eval"):
        corpus = _metadata(tmp_path / split, [("X_1", split, held)])
        check_pool_hygiene([_clip(kept)], corpus)
        with pytest.raises(PoolHygieneError, match=rf"prompt key '{held}' belongs to dev/eval"):
            check_pool_hygiene([_clip(kept), _clip(held)], corpus)


@pytest.mark.parametrize("split", ["dev", "eval"])
def test_a_dev_or_eval_key_is_refused_even_when_the_corpus_does_not_list_it(tmp_path, split):
    """The hash rule wins too: a held-out key that no rendered corpus clip happens to use is still held out."""
    corpus = _metadata(tmp_path, [])
    key = keys_of_split(split, 1)[0]
    with pytest.raises(PoolHygieneError, match=rf"prompt key '{key}' belongs to dev/eval"):
        check_pool_hygiene([_clip(key)], corpus)
