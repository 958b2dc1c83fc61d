"""Hostile or degenerate protocol files (issue 10, items 5, 7 and 13): each is refused with an error that names the
file (and the line where one applies), instead of a 0-row split, a silent `{}`, double-counted audio, audio read
from another split's folder, or a truncated label."""

from pathlib import Path

import pytest
from audio_fixtures import write_asvspoof5, write_asvspoof2019_la, write_clip, write_in_the_wild, write_lines

from training.data.loaders import (
    AudioCollator,
    ProtocolError,
    load_asvspoof5,
    load_asvspoof2019_la,
    load_csv_dataset,
    load_in_the_wild,
)


T5 = "ASVspoof5.train.tsv"
GOOD5 = "T_3734 T_0000000011 F - - - - bonafide bonafide -"


# ----- empty inputs (item 5) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [[], ["", "   "]], ids=["zero-bytes", "blank-lines"])
def test_empty_asvspoof5_protocol_is_an_error_naming_the_file(tmp_path, lines):
    write_asvspoof5(tmp_path, protocols={"train": (T5, lines)})
    with pytest.raises(ProtocolError, match=rf"{T5}: the protocol lists no utterances") as error:
        load_asvspoof5(tmp_path, splits=("train",))
    assert Path(error.value.path).name == T5


def test_empty_asvspoof2019_protocol_is_an_error(tmp_path):
    write_asvspoof2019_la(tmp_path)
    write_lines(tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.dev.trl.txt", [])
    with pytest.raises(ProtocolError, match=r"ASVspoof2019\.LA\.cm\.dev\.trl\.txt: the protocol lists no"):
        load_asvspoof2019_la(tmp_path, splits=("dev",))


@pytest.mark.parametrize("header", ["path,label", "path,label,split,utt_id"])
def test_header_only_csv_is_an_error_naming_the_file(tmp_path, header):
    write_lines(tmp_path / "list.csv", [header])
    with pytest.raises(ProtocolError, match=r"list\.csv: the protocol lists no utterances"):
        load_csv_dataset(tmp_path / "list.csv")


def test_header_only_in_the_wild_meta_is_an_error(tmp_path):
    write_lines(tmp_path / "meta.csv", ["file,speaker,label"])
    with pytest.raises(ProtocolError, match=r"meta\.csv: the protocol lists no utterances"):
        load_in_the_wild(tmp_path)


def test_completely_empty_csv_is_an_error(tmp_path):
    (tmp_path / "list.csv").write_text("")
    with pytest.raises(ProtocolError, match=r"list\.csv"):
        load_csv_dataset(tmp_path / "list.csv")


def test_skip_missing_that_drops_every_row_is_an_error(tmp_path):
    write_asvspoof5(tmp_path, protocols={"train": (T5, ["T_4850 T_9999999999 F - - - AC3 A05 spoof -"])})
    with pytest.raises(ProtocolError, match=rf"{T5}: every one of the 1 protocol rows lacks its audio"):
        load_asvspoof5(tmp_path, splits=("train",), skip_missing=True)


@pytest.mark.parametrize(
    "second, message",
    [
        ("./a.wav,spoof,y", r"list\.csv:3: .*a\.wav is listed again .*line 2.* with the opposite label"),
        ("sub/../a.wav,bonafide,y", r"list\.csv:3: .*a\.wav is listed again .*line 2"),
    ],
    ids=["opposite-labels", "same-label"],
)
def test_same_file_listed_twice_is_an_error_naming_both_lines(tmp_path, second, message):
    write_clip(tmp_path / "a.wav", 0.2)
    write_lines(tmp_path / "list.csv", ["path,label,utt_id", "a.wav,bonafide,x", second])
    with pytest.raises(ProtocolError, match=message):
        load_csv_dataset(tmp_path / "list.csv")


def test_same_file_in_two_csv_splits_is_an_error(tmp_path):
    write_clip(tmp_path / "a.wav", 0.2)
    write_lines(tmp_path / "list.csv", ["path,label,utt_id,split", "a.wav,1,x,train", f"{tmp_path}/a.wav,0,y,eval"])
    with pytest.raises(ProtocolError, match=r"list\.csv:3: .*listed again"):
        load_csv_dataset(tmp_path / "list.csv")


# ----- paths out of the split's folder (item 7) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "utt_id",
    [
        "../flac_D/D_0000000001",
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../../flac_D/D_0000000001",
        "../flac_T_extra/T_0000000099",  # a sibling folder whose name starts with the split folder's
    ],
)
def test_asvspoof5_utterance_outside_the_split_folder_is_refused(tmp_path, utt_id):
    write_clip(tmp_path / "flac_T_extra" / "T_0000000099.flac", 0.2)
    write_asvspoof5(tmp_path, protocols={"train": (T5, [GOOD5, f"T_4850 {utt_id} F - - - AC3 A05 spoof -"])})
    with pytest.raises(ProtocolError, match=rf"{T5}:2: .*outside the split's audio folder .*flac_T"):
        load_asvspoof5(tmp_path, splits=("train",))
    with pytest.raises(ProtocolError, match=rf"{T5}:2: "):  # skipping missing audio does not let it through either
        load_asvspoof5(tmp_path, splits=("train",), skip_missing=True)


def test_asvspoof2019_utterance_outside_the_split_folder_is_refused(tmp_path):
    write_asvspoof2019_la(tmp_path)
    protocol = tmp_path / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt"
    write_lines(
        protocol,
        ["LA_0079 LA_T_1138215 - - bonafide", "LA_0069 ../../ASVspoof2019_LA_dev/flac/LA_D_1047731 - - bonafide"],
    )
    with pytest.raises(ProtocolError, match=r"trn\.txt:2: .*outside the split's audio folder"):
        load_asvspoof2019_la(tmp_path, splits=("train",))


def test_in_the_wild_file_outside_its_folder_is_refused(tmp_path):
    write_in_the_wild(tmp_path / "itw")
    write_clip(tmp_path / "elsewhere.wav", 0.2)
    write_lines(tmp_path / "itw" / "meta.csv", ["file,speaker,label", "0.wav,A,spoof", "../elsewhere.wav,B,spoof"])
    with pytest.raises(ProtocolError, match=r"meta\.csv:3: .*outside the split's audio folder"):
        load_in_the_wild(tmp_path / "itw")


@pytest.mark.parametrize("folder", ["other", "clips_extra"])  # clips_extra/ shares the audio root's prefix
def test_csv_relative_path_climbing_out_of_the_audio_root_is_refused(tmp_path, folder):
    write_clip(tmp_path / folder / "b.wav", 0.2)
    write_clip(tmp_path / "clips" / "a.wav", 0.2)
    write_lines(tmp_path / "clips" / "list.csv", ["path,label", "a.wav,1", f"../{folder}/b.wav,0"])
    with pytest.raises(ProtocolError, match=r"list\.csv:3: .*outside the split's audio folder"):
        load_csv_dataset(tmp_path / "clips" / "list.csv")


def test_csv_absolute_paths_are_the_users_explicit_choice(tmp_path):
    """A CSV describes its own corpus: absolute paths are allowed (the docstring says so); only `..` is refused."""
    write_clip(tmp_path / "other" / "b.wav", 0.2)
    write_clip(tmp_path / "clips" / "a.wav", 0.2)
    write_lines(tmp_path / "clips" / "list.csv", ["path,label", "a.wav,1", f"{tmp_path / 'other' / 'b.wav'},0"])
    assert len(load_csv_dataset(tmp_path / "clips" / "list.csv")["eval"]) == 2


# ----- fractional labels (item 13) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["0.5", "1.0", "0.0", "2", "-1"])
def test_csv_label_that_is_not_a_class_is_an_error(tmp_path, label):
    write_clip(tmp_path / "a.wav", 0.2)
    write_lines(tmp_path / "list.csv", ["path,label", f"a.wav,{label}"])
    with pytest.raises(ProtocolError, match=rf"list\.csv:2: label '{label}' is neither"):
        load_csv_dataset(tmp_path / "list.csv")


@pytest.mark.parametrize("label", [0.5, 1.7, 2, -1, "1"])
def test_collator_refuses_a_label_that_is_not_0_or_1(tmp_path, label):
    write_clip(tmp_path / "a.wav", 0.2)
    row = {"audio": str(tmp_path / "a.wav"), "label": label, "utt_id": "a"}
    with pytest.raises(ValueError, match=r"utterance 'a': label .* must be 0 \(spoof\) or 1 \(bonafide\)"):
        AudioCollator(train=False)([row])
