"""Loaders, decoding and batching of `training.data.loaders` on tiny corpora written in the real release formats."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import (
    ASVSPOOF5_PROTOCOLS,
    ENROLMENT_IDS,
    write_asvspoof5,
    write_asvspoof2019_la,
    write_clip,
    write_in_the_wild,
    write_lines,
)

from training.data.audio import crop_or_pad, eval_windows, load_audio
from training.data.loaders import (
    LABEL_NAMES,
    AudioCollator,
    AudioDecodeError,
    ClipPolicy,
    MissingAudioError,
    ProtocolError,
    audio_paths,
    load_asvspoof5,
    load_asvspoof2019_la,
    load_csv_dataset,
    load_in_the_wild,
)


@pytest.fixture(scope="module")
def asvspoof5_root(tmp_path_factory) -> Path:
    return write_asvspoof5(tmp_path_factory.mktemp("asvspoof5"), protocol_folder="ASVspoof5_protocols")


def row_of(dataset, utt_id: str) -> dict:
    return dataset[dataset["utt_id"].index(utt_id)]


# ---------------------------------------------------------------------------------------------------------------------
# loaders


@pytest.mark.parametrize("protocol_folder", ["", "ASVspoof5_protocols"])
def test_load_asvspoof5_reads_release_layout(tmp_path, protocol_folder):
    ds = load_asvspoof5(write_asvspoof5(tmp_path, protocol_folder))
    assert list(ds) == ["train", "dev", "eval"]
    assert [len(ds[s]) for s in ds] == [3, 2, 4]  # protocol rows only: enrolment audio is not an example
    assert not set(ENROLMENT_IDS) & {u for s in ds for u in ds[s]["utt_id"]}
    assert ds["train"].features["label"].names == LABEL_NAMES == ["spoof", "bonafide"]
    for split in ds:
        assert set(ds[split]["split"]) == {split}
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in audio_paths(ds[split]))
    assert ds["train"]["label"] == [0, 1, 0]
    assert ds["train"]["attack"] == ["A05", "bonafide", "A01"]


@pytest.mark.parametrize(
    "utt_id, expected",
    [
        # coded spoof: codec columns kept, seed points at the uncoded source
        (
            "E_0009538969",
            dict(
                label=0,
                attack="A26",
                attack_tag="AC1",
                codec="C05",
                codec_q=2,
                codec_seed="E_0009486171",
                speaker="E_1607",
                gender="M",
            ),
        ),
        # uncoded eval row ("- 0 -"): codec none, quality 0, its own seed
        (
            "E_0009486171",
            dict(label=0, attack="A26", attack_tag="AC1", codec="none", codec_q=0, codec_seed="E_0009486171"),
        ),
        (
            "E_0000000005",
            dict(label=1, attack="bonafide", attack_tag="none", codec="none", codec_q=0, codec_seed="E_0000000005"),
        ),
        (
            "E_0000000006",
            dict(label=1, attack="bonafide", codec="C11", codec_q=7, codec_seed="E_0000000005", gender="F"),
        ),
    ],
)
def test_load_asvspoof5_eval_columns(asvspoof5_root, utt_id, expected):
    row = row_of(load_asvspoof5(asvspoof5_root, splits=("eval",))["eval"], utt_id)
    assert {k: row[k] for k in expected} == expected
    assert row["audio"] == {"bytes": None, "path": str(asvspoof5_root / "flac_E_eval" / f"{utt_id}.flac")}


def test_load_asvspoof5_only_requested_splits(tmp_path):
    root = write_asvspoof5(tmp_path)
    for folder in ("flac_T", "flac_E_eval"):  # unrequested splits may be absent
        for f in (root / folder).iterdir():
            f.unlink()
        (root / folder).rmdir()
    assert list(load_asvspoof5(root, splits=("dev",))) == ["dev"]
    assert list(load_asvspoof5(root, splits="dev")) == ["dev"]


@pytest.mark.parametrize("splits", [("test",), ("train", "validation"), ()])
def test_load_asvspoof5_rejects_unknown_splits(asvspoof5_root, splits):
    with pytest.raises(ValueError, match="splits must be a non-empty subset"):
        load_asvspoof5(asvspoof5_root, splits=splits)


def test_load_asvspoof5_missing_protocol_names_both_places(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"ASVspoof5\.dev\.track_1\.tsv not found in .* or .*ASVspoof5_protocols"
    ):
        load_asvspoof5(tmp_path, splits=("dev",))


@pytest.mark.parametrize("use_la_folder", [False, True])
def test_load_asvspoof2019_la(tmp_path, use_la_folder):
    root = write_asvspoof2019_la(tmp_path)
    ds = load_asvspoof2019_la(root / "LA" if use_la_folder else root)
    assert {s: len(ds[s]) for s in ds} == {"train": 2, "dev": 2, "eval": 2}  # enrolment flac files ignored
    assert ds["eval"]["utt_id"] == ["LA_E_2834763", "LA_E_8877452"]
    assert ds["eval"]["label"] == [0, 1]
    assert ds["eval"]["attack"] == ["A11", "bonafide"]
    assert set(ds["train"]["codec"]) == {"none"}
    assert audio_paths(ds["dev"])[1] == str(root / "LA" / "ASVspoof2019_LA_dev" / "flac" / "LA_D_1105538.flac")


def test_load_asvspoof2019_la_without_protocol_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="ASVspoof2019_LA_cm_protocols"):
        load_asvspoof2019_la(tmp_path)


def test_load_in_the_wild(tmp_path):
    ds = load_in_the_wild(write_in_the_wild(tmp_path))
    assert list(ds) == ["eval"]
    assert ds["eval"]["utt_id"] == ["0", "1", "2"]
    assert ds["eval"]["label"] == [0, 1, 0]
    assert ds["eval"]["speaker"] == ["Alec Guinness", "Alec Guinness", "Barack Obama"]
    assert ds["eval"]["attack"] == ["unknown", "bonafide", "unknown"]
    assert audio_paths(ds["eval"])[2] == str(tmp_path / "2.wav")


def test_load_csv_dataset_labels_splits_and_paths(tmp_path):
    for seed, name in enumerate(("a", "b", "c", "d", "e")):
        write_clip(tmp_path / "clips" / f"{name}.wav", 0.2, seed=seed)  # distinct bytes: a copy would be a leak
    write_lines(
        tmp_path / "meta" / "list.csv",
        [
            "path,label,split,attack,codec,codec_q,extra",
            "a.wav,bonafide,train,,,,x",
            "b.wav,Bona-Fide,train,,mp3,3,x",
            f"{tmp_path / 'clips' / 'c.wav'},spoof,dev,A07,-,-,x",  # absolute path kept
            "d.wav,1,dev,,,,x",
            "e.wav,0,dev,,,,x",
        ],
    )
    ds = load_csv_dataset(tmp_path / "meta" / "list.csv", audio_root=tmp_path / "clips")
    assert {s: ds[s]["utt_id"] for s in ds} == {"train": ["a", "b"], "dev": ["c", "d", "e"]}
    assert list(ds["train"]["label"]) + list(ds["dev"]["label"]) == [1, 1, 0, 1, 0]
    assert ds["dev"]["attack"] == ["A07", "bonafide", "unknown"]
    assert (ds["train"]["codec"], ds["train"]["codec_q"]) == (["unknown", "mp3"], [0, 3])
    assert ds["dev"]["codec"][0] == "none"
    assert audio_paths(ds["dev"])[2] == str(tmp_path / "clips" / "e.wav")


def test_load_csv_dataset_defaults_to_csv_folder_and_one_split(tmp_path):
    write_clip(tmp_path / "x.flac", 0.2)
    write_lines(tmp_path / "list.csv", ["path,label", "x.flac,spoof"])
    ds = load_csv_dataset(tmp_path / "list.csv", split="test")
    assert list(ds) == ["test"] and audio_paths(ds["test"]) == [str(tmp_path / "x.flac")]


# ---------------------------------------------------------------------------------------------------------------------
# bad protocols and missing audio

T5 = "ASVspoof5.train.tsv"
GOOD5 = "T_3734 T_0000000011 F - - - - bonafide bonafide -"


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("T_4850 T_0000000000 F - - - AC3 A05 spoof", "expected 10 columns"),
        ("T_4850 T_0000000000 F - - - AC3 A05 fake -", "KEY .* must be 'bonafide' or 'spoof'"),
        ("T_4850 T_0000000000 F C01 high - AC3 A05 spoof -", "CODEC_Q must be an integer"),
        ("T_4850 T_0000000000 F - - - AC3 bonafide spoof -", "KEY is spoof but the attack field is 'bonafide'"),
        ("T_4850 T_0000000000 F - - - - A05 bonafide -", "KEY is bonafide but the attack field is 'A05'"),
    ],
)
def test_malformed_asvspoof5_line_names_file_and_line(tmp_path, bad_line, message):
    write_asvspoof5(tmp_path, protocols={"train": (T5, [GOOD5, "", bad_line])})
    with pytest.raises(ProtocolError, match=rf"{T5}:3: {message}") as error:
        load_asvspoof5(tmp_path, splits=("train",))
    assert (Path(error.value.path).name, error.value.line) == (T5, 3)


@pytest.mark.parametrize(
    "writer, file, lines, message",
    [
        (
            "la",
            "ASVspoof2019.LA.cm.train.trn.txt",
            ["LA_0079 LA_T_1138215 - - bonafide", "LA_0079 LA_T_1 A01 spoof"],
            ":2: expected 5 columns",
        ),
        (
            "la",
            "ASVspoof2019.LA.cm.train.trn.txt",
            ["LA_0079 LA_T_1138215 - - spoof"],
            ":1: KEY is spoof but the attack field is '-'",
        ),
        ("itw", "meta.csv", ["file,speaker,label", "0.wav,A,spoof", "1.wav,B,real"], ":3: label 'real' is neither"),
        (
            "itw",
            "meta.csv",
            ["file,label", "0.wav,spoof"],
            r":1: header \['file', 'label'\] lacks the column\(s\) \['speaker'\]",
        ),
        ("itw", "meta.csv", ["file,speaker,label", "0.wav,A,spoof,extra"], ":2: expected 3 fields"),
        ("csv", "list.csv", ["path,label", "a.wav,bonafide", "b.wav,maybe"], ":3: label 'maybe' is neither"),
        (
            "csv",
            "list.csv",
            ["file,label", "a.wav,bonafide"],
            r":1: header \['file', 'label'\] lacks the column\(s\) \['path'\]",
        ),
    ],
)
def test_malformed_metadata_names_file_and_line(tmp_path, writer, file, lines, message):
    if writer == "la":
        write_asvspoof2019_la(tmp_path)
        write_lines(tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / file, lines)
        load = lambda: load_asvspoof2019_la(tmp_path, splits=("train",))  # noqa: E731
    elif writer == "itw":
        write_in_the_wild(tmp_path)
        write_lines(tmp_path / file, lines)
        load = lambda: load_in_the_wild(tmp_path)  # noqa: E731
    else:
        write_lines(tmp_path / file, lines)
        load = lambda: load_csv_dataset(tmp_path / file)  # noqa: E731
    with pytest.raises(ProtocolError, match=f"{file}{message}"):
        load()


def test_duplicate_utterance_id_names_id_and_both_lines(tmp_path):
    lines = [GOOD5, "T_4850 T_0000000000 F - - - AC3 A05 spoof -", "T_4850 T_0000000011 F - - - AC3 A05 spoof -"]
    write_asvspoof5(tmp_path, protocols={"train": (T5, lines)})
    with pytest.raises(
        ProtocolError, match=rf"{T5}:3: duplicate utterance id 'T_0000000011' \(first seen on line 1\)"
    ):
        load_asvspoof5(tmp_path, splits=("train",))


def test_duplicate_across_csv_splits(tmp_path):
    write_lines(tmp_path / "l.csv", ["path,label,split", "a.wav,1,train", "b.wav,0,train", "sub/a.wav,0,eval"])
    with pytest.raises(ProtocolError, match=r"l\.csv:4: duplicate utterance id 'a' \(first seen on line 2\)"):
        load_csv_dataset(tmp_path / "l.csv")


def _protocol_with_missing(root: Path) -> Path:
    lines = [GOOD5] + [f"T_4850 T_99999999{i:02d} F - - - AC3 A05 spoof -" for i in range(7)]
    return write_asvspoof5(root, protocols={"train": (T5, lines)})


def test_missing_audio_raises_with_count_and_first_files(tmp_path):
    with pytest.raises(
        MissingAudioError, match=r"7 of 8 protocol rows have no audio file \(first: .*T_9999999900\.flac"
    ) as error:
        load_asvspoof5(_protocol_with_missing(tmp_path), splits=("train",))
    assert len(error.value.missing) == 7
    assert "T_9999999904.flac, ..." in str(error.value) and "T_9999999905" not in str(error.value)  # first 5 only


def test_skip_missing_drops_rows_and_reports_them(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.data.loaders"):
        ds = load_asvspoof5(_protocol_with_missing(tmp_path), splits=("train",), skip_missing=True)
    assert ds["train"]["utt_id"] == ["T_0000000011"]
    assert (
        "7 protocol rows skipped because their audio is missing (first: T_9999999900" in ds["train"].info.description
    )
    assert "7 protocol rows skipped" in caplog.text


def test_missing_audio_folder_counts_every_row_missing(tmp_path):
    write_lines(tmp_path / "ASVspoof5.dev.track_1.tsv", ASVSPOOF5_PROTOCOLS["dev"][1])
    with pytest.raises(MissingAudioError, match="2 of 2 protocol rows"):
        load_asvspoof5(tmp_path, splits=("dev",))


# ---------------------------------------------------------------------------------------------------------------------
# decoding, resampling, crop / pad


def test_load_audio_16k_mono_roundtrip(tmp_path):
    data = write_clip(tmp_path / "a.flac", 0.5)
    wave = load_audio(tmp_path / "a.flac")
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    np.testing.assert_allclose(wave, data, atol=1 / 2**15)  # 16-bit quantisation only


def test_load_audio_resamples_8k_and_keeps_the_tone(tmp_path):
    write_clip(tmp_path / "a.flac", 0.5, sampling_rate=8000, seed=0)  # 220 Hz tone
    wave = load_audio(tmp_path / "a.flac", sampling_rate=16_000)
    assert wave.shape == (8000,)
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16_000 / len(wave)
    assert abs(peak_hz - 220) <= 2


def test_load_audio_downmixes_stereo_by_mean(tmp_path):
    data = write_clip(tmp_path / "a.wav", 0.25, channels=2)
    np.testing.assert_allclose(load_audio(tmp_path / "a.wav"), data.mean(axis=1), atol=2 / 2**15)


def _write_header_only(path: Path):
    sf.write(path, np.zeros(0), 16_000, format="WAV")  # a valid header and 0 frames (libsndfile sniffs the format)


@pytest.mark.parametrize(
    "make_bad, reason",
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"fLaC" + bytes(range(256)) * 4), "not an audio file that can be decoded"),
        (_write_header_only, "no audio samples"),
        (lambda p: None, "file not found"),  # deleted after loading the protocol
    ],
    ids=["zero-bytes", "garbage", "no-samples", "vanished"],
)
def test_unreadable_audio_is_a_clear_error_naming_the_file(tmp_path, make_bad, reason):
    path = tmp_path / "bad.flac"
    make_bad(path)
    with pytest.raises(AudioDecodeError, match=rf"cannot decode audio file {path}: .*{reason}"):
        load_audio(path)


def test_non_finite_audio_is_rejected(tmp_path):
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="nan.wav: 1 samples are NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


def test_random_crop_is_a_window_of_the_clip_and_seeded():
    wave = np.arange(100, dtype=np.float32)
    crops = [crop_or_pad(wave, 30, "random", "repeat", np.random.default_rng(7))[0] for _ in range(2)]
    np.testing.assert_array_equal(crops[0], crops[1])
    start = int(crops[0][0])
    np.testing.assert_array_equal(crops[0], wave[start : start + 30])
    starts = {int(crop_or_pad(wave, 30, "random", "repeat", np.random.default_rng(s))[0][0]) for s in range(20)}
    assert len(starts) > 5 and max(starts) <= 70


@pytest.mark.parametrize(
    "crop, pad, expected, num_signal",
    [
        ("random", "repeat", [0, 1, 2, 0, 1, 2, 0], 7),
        ("start", "zero", [0, 1, 2, 0, 0, 0, 0], 3),
        ("center", "repeat", [0, 1, 2, 0, 1, 2, 0], 7),
    ],
)
def test_short_clips_are_padded(crop, pad, expected, num_signal):
    clip, signal = crop_or_pad(np.arange(3, dtype=np.float32), 7, crop, pad, np.random.default_rng(0))
    assert clip.tolist() == expected and signal == num_signal


def test_eval_windows_cover_the_clip_and_end_at_its_end():
    windows = eval_windows(np.arange(25, dtype=np.float32), 10, 10, "repeat")
    assert [int(w[0]) for w, _ in windows] == [0, 10, 15]
    assert all(len(w) == 10 and n == 10 for w, n in windows)
    assert len(eval_windows(np.arange(4, dtype=np.float32), 10, 5, "zero")) == 1


@pytest.mark.parametrize(
    "field, value", [("train_crop", "middle"), ("pad", "reflect"), ("eval_mode", "tiles"), ("num_samples", 0)]
)
def test_clip_policy_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ClipPolicy(**{field: value})


# ---------------------------------------------------------------------------------------------------------------------
# collator


def _rows(ds, split: str) -> list[dict]:
    return [ds[split][i] for i in range(len(ds[split]))]


def test_train_collator_shapes_masks_labels(asvspoof5_root):
    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("eval",)), "eval")  # 8 kHz, stereo and 16 kHz clips
    batch = AudioCollator(ClipPolicy(num_samples=9000), train=True)(rows)
    assert batch["input_values"].shape == (4, 9000) and batch["input_values"].dtype == torch.float32
    assert batch["attention_mask"].dtype == torch.long and bool(batch["attention_mask"].all())  # repeat pad = signal
    assert batch["labels"].tolist() == [0, 0, 1, 1]
    assert batch["utt_ids"] == ["E_0009538969", "E_0009486171", "E_0000000005", "E_0000000006"]
    x = batch["input_values"].double()
    torch.testing.assert_close(x.mean(dim=1), torch.zeros(4, dtype=torch.double), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=1, unbiased=False), torch.ones(4, dtype=torch.double), atol=1e-3, rtol=0)


def test_default_policy_gives_4_04_second_clips(asvspoof5_root):
    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("dev",)), "dev")
    batch = AudioCollator()(rows)
    assert ClipPolicy().num_samples == 64_600 and batch["input_values"].shape == (2, 64_600)


def test_train_collator_repeat_pads_raw_waveform(asvspoof5_root):
    row = row_of(load_asvspoof5(asvspoof5_root, splits=("train",))["train"], "T_0000000011")  # 0.25 s = 4000 samples
    batch = AudioCollator(ClipPolicy(num_samples=10_000, normalize=False), train=True)([row])
    wave = torch.from_numpy(load_audio(row["audio"]["path"]))
    torch.testing.assert_close(batch["input_values"][0], torch.cat([wave, wave, wave[:2000]]))


def test_zero_pad_policy_masks_the_padding(asvspoof5_root):
    row = row_of(load_asvspoof5(asvspoof5_root, splits=("train",))["train"], "T_0000000011")
    batch = AudioCollator(ClipPolicy(num_samples=6000, pad="zero"), train=True)([row])
    assert batch["attention_mask"][0].tolist() == [1] * 4000 + [0] * 2000
    assert batch["input_values"][0, 4000:].abs().sum() == 0


def test_eval_full_pads_to_longest_with_mask(asvspoof5_root):
    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("eval",)), "eval")
    batch = AudioCollator(train=False)(rows)
    lengths = [8000, 8000, 6400, 9600]  # the 8 kHz 0.5 s clip is resampled to 8000 samples
    assert batch["input_values"].shape == (4, 9600)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert batch["input_values"][i, n:].abs().sum() == 0


def test_eval_center_and_windows(asvspoof5_root):
    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("eval",)), "eval")
    center = AudioCollator(ClipPolicy(num_samples=3000, eval_mode="center", normalize=False), train=False)(rows[3:])
    wave = torch.from_numpy(load_audio(rows[3]["audio"]["path"]))  # 9600 samples → centre starts at 3300
    torch.testing.assert_close(center["input_values"][0], wave[3300:6300])
    windows = AudioCollator(ClipPolicy(num_samples=4000, eval_mode="windows", window_hop=2000), train=False)(rows)
    # 8000 → 3 windows, 8000 → 3, 6400 → 0/2000/2400 = 3, 9600 → 0/2000/4000/5600 = 4
    assert windows["input_values"].shape == (13, 4000)
    assert windows["utt_ids"] == [r["utt_id"] for r, n in zip(rows, [3, 3, 3, 4], strict=True) for _ in range(n)]
    assert windows["labels"].tolist() == [0] * 6 + [1] * 7


def test_random_crops_are_deterministic_by_seed(asvspoof5_root):
    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("eval",)), "eval")
    policy = ClipPolicy(num_samples=2000)
    first, again, other = (AudioCollator(policy, seed=s)(rows)["input_values"] for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    collator = AudioCollator(policy, seed=3)
    assert not torch.equal(collator(rows)["input_values"], collator(rows)["input_values"])  # new crops each call


def _epoch(dataset, collator, num_workers: int) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=num_workers, collate_fn=collator, generator=torch.Generator().manual_seed(0)
    )
    return torch.cat([b["input_values"] for b in loader])


def test_worker_crops_are_reproducible_and_differ_between_workers(asvspoof5_root):
    ds = load_asvspoof5(asvspoof5_root, splits=("eval",))["eval"]
    ds = ds.select([2, 3, 2, 3])  # same two clips in both workers' batches
    runs = [_epoch(ds, AudioCollator(ClipPolicy(num_samples=1000), seed=1), num_workers=2) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][:2], runs[0][2:])  # worker 0 and worker 1 crop differently


def test_collator_raises_on_bad_clip_by_default(asvspoof5_root, tmp_path):
    row = {"audio": str(tmp_path / "broken.flac"), "label": 1, "utt_id": "broken"}
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    with pytest.raises(AudioDecodeError, match="broken.flac"):
        AudioCollator()([row])


@pytest.mark.slow
@pytest.mark.parametrize("num_workers, context", [(0, None), (2, "fork"), (2, "spawn")])
def test_collator_skip_drops_and_counts_bad_clips(asvspoof5_root, tmp_path, num_workers, context):
    good = load_asvspoof5(asvspoof5_root, splits=("dev",))["dev"]
    (tmp_path / "broken.flac").write_bytes(b"not audio")
    bad = {**good[0], "utt_id": "broken", "audio": str(tmp_path / "broken.flac")}
    rows = [good[0], bad, good[1], bad]
    collator = AudioCollator(ClipPolicy(num_samples=1000), on_error="skip")
    loader = torch.utils.data.DataLoader(
        rows, batch_size=2, num_workers=num_workers, collate_fn=collator, multiprocessing_context=context
    )
    batches = list(loader)
    assert [b["utt_ids"] for b in batches] == [["D_0000000001"], ["D_0000000190"]]
    assert collator.num_skipped == 2
    empty = collator([bad])
    assert empty["input_values"].shape == (0, 0) and empty["labels"].shape == (0,) and collator.num_skipped == 3


# ---------------------------------------------------------------------------------------------------------------------
# the audio column and the feature extractor (issue 11 §4)


def test_audio_is_an_undecoded_audio_column_with_the_path(asvspoof5_root):
    from datasets import Audio

    ds = load_asvspoof5(asvspoof5_root, splits=("dev",))["dev"]
    assert ds.features["audio"] == Audio(decode=False)
    assert ds[0]["audio"] == {"bytes": None, "path": str(asvspoof5_root / "flac_D" / "D_0000000001.flac")}
    assert audio_paths(ds) == [row["audio"]["path"] for row in ds]
    assert audio_paths(ds.select([1])) == [str(asvspoof5_root / "flac_D" / "D_0000000190.flac")]


def test_collator_pads_and_normalises_with_the_feature_extractor(asvspoof5_root):
    from transformers import Wav2Vec2FeatureExtractor

    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("eval",)), "eval")
    waves = [load_audio(row["audio"]["path"]) for row in rows]
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    expected = extractor(
        waves, sampling_rate=16_000, padding="longest", return_attention_mask=True, return_tensors="pt"
    )
    batch = AudioCollator(train=False, feature_extractor=extractor)(rows)
    assert torch.equal(batch["input_values"], expected["input_values"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"].long())
    # The model's extractor decides normalisation (e.g. WavLM-Large does not normalise).
    raw = AudioCollator(train=False, feature_extractor=Wav2Vec2FeatureExtractor(do_normalize=False))(rows)
    torch.testing.assert_close(raw["input_values"][3], torch.from_numpy(waves[3]))


def test_collator_refuses_an_extractor_at_another_rate():
    from transformers import Wav2Vec2FeatureExtractor

    with pytest.raises(ValueError, match=r"8000 Hz, but ClipPolicy\.sampling_rate is 16000"):
        AudioCollator(feature_extractor=Wav2Vec2FeatureExtractor(sampling_rate=8000))


def test_collator_features_match_the_former_hand_written_normalisation(asvspoof5_root):
    """The extractor replaced a hand-written zero-mean / unit-variance over the signal samples: same numbers."""
    rows = _rows(load_asvspoof5(asvspoof5_root, splits=("train",)), "train")
    batch = AudioCollator(ClipPolicy(num_samples=6000, pad="zero", train_crop="start"), train=True)(rows)
    for i, row in enumerate(rows):
        clip = load_audio(row["audio"]["path"])[:6000]
        normalised = (clip - clip.mean()) / np.sqrt(clip.var() + 1e-7)
        n = len(clip)
        torch.testing.assert_close(batch["input_values"][i, :n], torch.from_numpy(normalised), atol=1e-5, rtol=0)
        assert batch["attention_mask"][i].sum() == n and batch["input_values"][i, n:].abs().sum() == 0
