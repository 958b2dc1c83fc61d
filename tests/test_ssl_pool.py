"""The pretraining pool's materialisation (issue 19's mutation audit): which corpus rows and extra clips it plans,
what `_render` writes, the staged build and its summary, and the manifest round trip with its errors.

The Asterisk recordings and transcripts are replaced by a few generated clips and prompts (`fake_sources`), so
these tests need no Debian package except ffmpeg for the codec copies; they run in about a second.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from ssl_fixtures import keys_of_split, write_corpus_metadata

from training.corpus import sources as corpus_sources
from training.corpus.make_mini_corpus import CODECS
from training.corpus.sources import Prompt, Recording
from training.encoders import ssl_pool
from training.encoders.ssl_pool import MANIFEST, SUMMARY, PoolClip


def _voiced(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return 0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(t.size)


def _wav(path: Path, seconds: float, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _voiced(seconds, seed), 16000, subtype="PCM_16")
    return str(path)


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Two train recordings (one too short for the channel), one dev recording, train prompts in English and
    Spanish and one dev prompt, in place of the Asterisk packages."""
    train_keys, dev_key = keys_of_split("train", 4), keys_of_split("dev", 1)[0]
    recordings = [
        Recording(_wav(tmp_path / "rec" / "a.wav", 1.5, 1), train_keys[0], "train", None, 1.5),
        Recording(_wav(tmp_path / "rec" / "b.wav", 0.2, 2), train_keys[1], "train", None, 0.2),
        Recording(_wav(tmp_path / "rec" / "d.wav", 1.5, 3), dev_key, "dev", None, 1.5),
    ]
    prompts = [
        Prompt(train_keys[2], "en", "hello there", "train"),
        Prompt(train_keys[3], "es", "hola amigo", "train"),
        Prompt(dev_key, "en", "held out words", "dev"),
    ]
    monkeypatch.setattr(ssl_pool, "load_recordings_any_length", lambda: recordings)
    monkeypatch.setattr(ssl_pool, "load_prompts", lambda: prompts)
    return recordings, prompts


def _write_corpus(folder: Path) -> Path:
    """A corpus with train rows (a rendered bona fide clip, a spoof, an unrendered one) beside dev/eval rows."""
    corpus = write_corpus_metadata(folder, [])
    key = keys_of_split("train", 1)[0]
    with open(corpus / "mini_corpus.metadata.tsv", "a", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        for file, attack, variant in (("T_1", "bonafide", "-"), ("T_2", "A01", "m3"), ("T_3", "bonafide", "-")):
            writer.writerow([file, "train", attack, variant, "en", key, "-", "-", "-", "-", "false"])
    _wav(corpus / "flac_T" / "T_1.flac", 0.8)
    _wav(corpus / "flac_T" / "T_2.flac", 1.2346)
    return corpus


def test_corpus_train_clips_are_the_train_rows_with_their_durations_spoofs_only_when_asked(tmp_path):
    corpus = _write_corpus(tmp_path / "corpus")
    key = keys_of_split("train", 1)[0]
    bonafide = [
        PoolClip(str(corpus / "flac_T" / "T_1.flac"), "corpus_train", "bonafide", "-", key, 0.8),
        PoolClip(str(corpus / "flac_T" / "T_3.flac"), "corpus_train", "bonafide", "-", key, 0.0),  # not rendered
    ]
    assert ssl_pool.corpus_train_clips(corpus, use_spoofs=False) == bonafide
    spoof = PoolClip(str(corpus / "flac_T" / "T_2.flac"), "corpus_train", "A01", "m3", key, 1.235)  # 3 decimals
    assert ssl_pool.corpus_train_clips(str(corpus), use_spoofs=True) == [bonafide[0], spoof, bonafide[1]]
    with pytest.raises(FileNotFoundError, match=r"mini_corpus\.metadata\.tsv is missing: build the corpus"):
        ssl_pool.corpus_train_clips(tmp_path / "nothing", use_spoofs=True)


def test_load_recordings_any_length_lifts_the_length_bounds_only_for_the_call(monkeypatch):
    bounds = corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS
    seen = []

    def load():
        seen.append((corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS))
        if len(seen) == 2:
            raise RuntimeError("package vanished")
        return ["recording"]

    monkeypatch.setattr(ssl_pool, "load_recordings", load)
    assert ssl_pool.load_recordings_any_length() == ["recording"]
    assert seen == [(0.0, float("inf"))]
    assert (corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS) == bounds
    with pytest.raises(RuntimeError, match="package vanished"):
        ssl_pool.load_recordings_any_length()
    assert (corpus_sources.MIN_SECONDS, corpus_sources.MAX_SECONDS) == bounds  # restored after a failure too


def test_the_plan_uses_train_recordings_and_prompts_only_with_each_attacks_own_inputs(fake_sources):
    recordings, prompts = fake_sources
    tasks = ssl_pool.plan_extra_clips(True, 3, True, coded_fraction=0.0, seed=0)
    assert [t["name"] for t in tasks] == [f"P_{n:06d}" for n in range(11)]  # 2 train recordings + 3 x 3 spoofs
    bonafide = [t for t in tasks if t["attack"] == "bonafide"]
    assert [(t["source"], t["key"], t["variant"], t["text"], t["lang"]) for t in bonafide] == [
        (r.path, r.key, "-", "", "") for r in recordings[:2]
    ]
    assert {t["origin"] for t in bonafide} == {"extra_bonafide"}
    spoofs = {label: [t for t in tasks if t["attack"] == label] for label in ("A01", "A02", "A04")}
    assert all(len(group) == 3 for group in spoofs.values()) and len(bonafide) + 9 == len(tasks)
    english, spanish = prompts[0], prompts[1]
    assert [(t["key"], t["text"], t["lang"]) for t in spoofs["A01"]] == [
        (p.key, p.text, p.lang)
        for p in (english, spanish, english)  # espeak-ng speaks every language, in turn
    ]
    assert {(t["key"], t["text"], t["lang"]) for t in spoofs["A02"]} == {(english.key, english.text, "en")}
    for task in spoofs["A04"]:  # copy-synthesis: a train recording, no text
        assert (task["source"], task["key"]) in {(r.path, r.key) for r in recordings[:2]}
        assert (task["text"], task["lang"]) == ("", "")
    for label, group in spoofs.items():
        assert all(t["variant"] in ssl_pool.ATTACK_BY_LABEL[label].variants for t in group)
        assert all(t["source"] == "" for t in group if label != "A04") and {t["origin"] for t in group} == {
            "extra_spoof"
        }
    assert all(t["codec"] is None for t in tasks)
    assert len({t["seed"] for t in tasks}) == len(tasks) and all(0 <= t["seed"] < 2**62 for t in tasks)
    assert max(t["seed"] for t in tasks) > 2**40  # drawn from the whole 62-bit range


def test_the_plan_is_seeded_and_codes_the_asked_share(fake_sources):
    first = ssl_pool.plan_extra_clips(True, 2, True, coded_fraction=1.0, seed=5)
    assert first == ssl_pool.plan_extra_clips(True, 2, True, coded_fraction=1.0, seed=5)
    assert [t["seed"] for t in first] != [t["seed"] for t in ssl_pool.plan_extra_clips(True, 2, True, 1.0, seed=6)]
    for task in first:
        codec, quality = task["codec"]
        assert codec in CODECS and quality in (1, 2, 3) and isinstance(quality, int)
    many = ssl_pool.plan_extra_clips(True, 40, True, coded_fraction=1.0, seed=0)
    assert {t["codec"][0] for t in many} == set(CODECS) and {t["codec"][1] for t in many} == {1, 2, 3}
    half = ssl_pool.plan_extra_clips(True, 40, True, coded_fraction=0.5, seed=0)
    assert 0.3 < sum(t["codec"] is not None for t in half) / len(half) < 0.7


@pytest.mark.parametrize(
    ("extra_bonafide", "spoofs_per_attack", "use_spoofs", "attacks"),
    [(False, 2, True, {"A01", "A02", "A04"}), (True, 2, False, {"bonafide"}), (True, 0, True, {"bonafide"})],
)
def test_the_plan_leaves_out_what_is_not_asked(fake_sources, extra_bonafide, spoofs_per_attack, use_spoofs, attacks):
    tasks = ssl_pool.plan_extra_clips(extra_bonafide, spoofs_per_attack, use_spoofs, 0.0, seed=0)
    assert {t["attack"] for t in tasks} == attacks
    assert len(tasks) == (2 if extra_bonafide else 0) + (3 * spoofs_per_attack if use_spoofs else 0)


def _task(tmp_path: Path, source: str, codec=None, seed: int = 0, name: str = "P_000007") -> dict:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    task = {"attack": "bonafide", "variant": "-", "source": source, "key": "k", "text": "", "lang": ""}
    return task | {"name": name, "seed": seed, "codec": codec, "origin": "extra_bonafide", "out_dir": str(out)}


def test_render_writes_the_channelled_clip_and_its_codec_copy(tmp_path):
    source = _wav(tmp_path / "src.wav", 1.5)
    plain = ssl_pool._render(_task(tmp_path, source))
    [(name, base, origin, seconds)] = plain["written"]
    assert (name, base, origin) == ("P_000007", "P_000007", "extra_bonafide") and 1.0 < seconds <= 1.5
    audio, rate = sf.read(tmp_path / "out" / "P_000007.flac")
    assert rate == 16000 and audio.size == round(seconds * 16000)
    again = ssl_pool._render(_task(tmp_path, source, name="P_000008"))
    assert np.array_equal(sf.read(tmp_path / "out" / "P_000008.flac")[0], audio)  # seeded
    ssl_pool._render(_task(tmp_path, source, seed=1, name="P_000009"))
    assert not np.array_equal(sf.read(tmp_path / "out" / "P_000009.flac")[0], audio)
    assert again["written"][0][3] == seconds
    coded = ssl_pool._render(_task(tmp_path, source, codec=("C05", 2)))["written"]
    assert [row[:3] for row in coded] == [
        ("P_000007", "P_000007", "extra_bonafide"),
        ("P_000007_C05", "P_000007", "extra_bonafide+codec"),
    ]
    copy, _ = sf.read(tmp_path / "out" / "P_000007_C05.flac")
    assert coded[1][3] == copy.size / 16000 and abs(copy.size - audio.size) < 2000
    assert not np.allclose(copy[: min(copy.size, audio.size)], audio[: min(copy.size, audio.size)], atol=1e-3)


def test_render_of_a_stereo_recording_averages_its_channels(tmp_path):
    mono = _voiced(1.5)
    sf.write(tmp_path / "stereo.wav", np.stack([mono, mono * 0.5], axis=1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "mean.wav", mono * 0.75, 16000, subtype="FLOAT")
    ssl_pool._render(_task(tmp_path, str(tmp_path / "stereo.wav"), name="S"))
    ssl_pool._render(_task(tmp_path, str(tmp_path / "mean.wav"), name="M"))
    assert np.array_equal(sf.read(tmp_path / "out" / "S.flac")[0], sf.read(tmp_path / "out" / "M.flac")[0])


def test_render_of_a_spoof_synthesises_it_with_its_variant(tmp_path, monkeypatch):
    calls = []

    def synthesize(attack, variant, rng, text, lang, source):
        calls.append((attack.label, variant, text, lang, source))
        return _voiced(1.2), 16000

    monkeypatch.setattr(ssl_pool, "synthesize", synthesize)
    task = _task(tmp_path, "") | {"attack": "A01", "variant": "m3", "text": "hello", "lang": "en"}
    [(name, _, origin, _)] = ssl_pool._render(task | {"origin": "extra_spoof"})["written"]
    assert calls == [("A01", "m3", "hello", "en", "")] and (name, origin) == ("P_000007", "extra_spoof")


def test_render_counts_a_clip_too_short_after_trimming_instead_of_writing_it(tmp_path):
    result = ssl_pool._render(_task(tmp_path, _wav(tmp_path / "short.wav", 0.2)))
    assert result == {"error": "P_000007: clip is shorter than 0.5 s after trimming (0.20 s)"}
    assert not list((tmp_path / "out").iterdir())


def _read_rows(pool: Path) -> list[dict]:
    with open(pool / MANIFEST, encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.mark.parametrize("workers", [1, 2])
def test_build_pool_writes_every_clip_its_manifest_and_summary_and_counts_failures(tmp_path, fake_sources, workers):
    corpus = _write_corpus(tmp_path / "corpus")
    pool = tmp_path / "pool"
    (tmp_path / ".pool.staging" / "junk").mkdir(parents=True)  # a crashed build's leftovers
    summary = ssl_pool.build_pool(pool, corpus, False, True, 0, coded_fraction=1.0, seed=0, workers=workers)
    assert not (tmp_path / ".pool.staging").exists() and sorted(p.name for p in pool.iterdir()) == [
        "flac",
        MANIFEST,
        SUMMARY,
    ]
    rows = _read_rows(pool)
    corpus_rows = [r for r in rows if r["origin"] == "corpus_train"]
    assert [r["file"] for r in corpus_rows] == [str(corpus / "flac_T" / f"T_{n}.flac") for n in (1, 3)]
    extra = [r for r in rows if r["origin"] != "corpus_train"]
    recording = fake_sources[0][0]
    codec = ssl_pool.plan_extra_clips(True, 0, False, 1.0, 0)[0]["codec"][0]
    assert [(r["file"], r["origin"]) for r in extra] == [
        ("flac/P_000000.flac", "extra_bonafide"),
        (f"flac/P_000000_{codec}.flac", "extra_bonafide+codec"),
    ]  # P_000001 (0.2 s) is too short after trimming
    assert {(r["attack"], r["variant"], r["prompt_key"]) for r in extra} == {("bonafide", "-", recording.key)}
    assert sorted(p.name for p in (pool / "flac").iterdir()) == [Path(r["file"]).name for r in extra]
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds[0] == 0.8 and seconds[1] == 0.0 and all(s > 1.0 for s in seconds[2:])
    assert summary == json.loads((pool / SUMMARY).read_text())
    assert summary == {
        "clips": 4,
        "by_origin": {"corpus_train": 2, "extra_bonafide": 1, "extra_bonafide+codec": 1},
        "by_attack": {"bonafide": 4},
        "hours": round(sum(seconds) / 3600, 3),
        "not_rendered": 1,
        "not_rendered_examples": ["P_000001: clip is shorter than 0.5 s after trimming (0.20 s)"],
        "settings": {
            "corpus_dir": str(corpus),
            "use_training_spoofs": False,
            "extra_bonafide": True,
            "extra_spoofs_per_attack": 0,
            "coded_fraction": 1.0,
            "seed": 0,
        },
    }
    assert [clip.file for clip in ssl_pool.read_manifest(pool)] == [
        *(r["file"] for r in corpus_rows),
        *(str(pool / r["file"]) for r in extra),
    ]


def test_build_pool_refuses_a_built_pool_and_replaces_a_folder_without_one(tmp_path, fake_sources):
    corpus = _write_corpus(tmp_path / "corpus")
    nested = ssl_pool.build_pool(tmp_path / "new" / "folders" / "pool", corpus, True, False, 0, 0.0, seed=0)
    assert nested["clips"] == 3 and (tmp_path / "new" / "folders" / "pool" / MANIFEST).is_file()
    pool = tmp_path / "pool"
    (pool / "stale").mkdir(parents=True)
    summary = ssl_pool.build_pool(pool, corpus, True, False, 0, coded_fraction=0.0, seed=0)
    assert not (pool / "stale").exists() and summary["by_attack"] == {"A01": 1, "bonafide": 2}
    assert summary["by_origin"] == {"corpus_train": 3} and summary["not_rendered"] == 0
    assert summary["not_rendered_examples"] == [] and summary["hours"] == round((0.8 + 1.235) / 3600, 3)
    with pytest.raises(FileExistsError, match=r"already holds a pool; delete it to rebuild"):
        ssl_pool.build_pool(pool, corpus, True, False, 0, coded_fraction=0.0, seed=0)
    assert len(_read_rows(pool)) == 3


def test_build_pool_keeps_only_the_first_ten_failures_as_examples(tmp_path, monkeypatch):
    corpus = _write_corpus(tmp_path / "corpus")
    tasks = [{"name": f"P_{n:06d}"} for n in range(12)]
    plans = []
    monkeypatch.setattr(ssl_pool, "plan_extra_clips", lambda *args: plans.append(args) or tasks)
    monkeypatch.setattr(ssl_pool, "_render", lambda task: {"error": f"{task['name']}: failed"})
    summary = ssl_pool.build_pool(tmp_path / "pool", corpus, True, True, 3, 0.25, seed=5)
    # extra_bonafide, spoofs_per_attack, use_spoofs, coded_fraction, seed: each option reaches the plan
    assert plans == [(True, 3, True, 0.25, 5)]
    assert summary["not_rendered"] == 12 and summary["not_rendered_examples"] == [
        f"P_{n:06d}: failed" for n in range(10)
    ]
    assert summary["clips"] == 3 and tasks[0]["out_dir"] == str(tmp_path / ".pool.staging" / "flac")


def test_the_manifest_round_trips_resolving_relative_files_against_the_pool(tmp_path):
    clips = [
        PoolClip("flac/P_000000.flac", "extra_bonafide", "bonafide", "-", "k1", 1.5),
        PoolClip("/corpus/flac_T/T_1.flac", "corpus_train", "A01", "m3", "k2", 2.25),
    ]
    ssl_pool.write_manifest(tmp_path, clips)
    assert _read_rows(tmp_path)[0] == {
        "file": "flac/P_000000.flac",
        "origin": "extra_bonafide",
        "attack": "bonafide",
        "variant": "-",
        "prompt_key": "k1",
        "seconds": "1.5",
    }
    assert ssl_pool.read_manifest(str(tmp_path)) == [
        PoolClip(str(tmp_path / "flac/P_000000.flac"), "extra_bonafide", "bonafide", "-", "k1", 0.0),
        PoolClip("/corpus/flac_T/T_1.flac", "corpus_train", "A01", "m3", "k2", 0.0),
    ]


def test_a_missing_or_malformed_manifest_is_an_error_naming_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pool_manifest\.tsv is missing: the pool was never built"):
        ssl_pool.read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("file\torigin\tattack\tvariant\n" + "flac/a.flac\tx\tbonafide\t-\n" * 2)
    with pytest.raises(ValueError, match=rf"{MANIFEST}:2: malformed pool row \('prompt_key'\)"):
        ssl_pool.read_manifest(tmp_path)
