"""What each protocol parser fills in and how it words its refusals (issue 19's mutation run of protocols.py left
these unpinned): the "unknown" / "none" defaults per corpus, the optional CSV columns, and every error naming the
file, the line and what was expected."""

import logging

import pytest
from audio_fixtures import write_asvspoof2019_la, write_clip, write_in_the_wild, write_lines

from training.data import protocols
from training.data.loaders import ProtocolError, load_asvspoof2019_la, load_csv_dataset, load_in_the_wild
from training.data.protocols import (
    ASVSPOOF5_COLUMNS,
    read_asvspoof5_protocol,
    read_asvspoof2019_protocol,
    read_label_csv,
    resolve_audio_paths,
)


LA_TRAIN = "ASVspoof2019.LA.cm.train.trn.txt"


def row_values(dataset, *columns):
    return [tuple(dataset[c][i] for c in columns) for i in range(len(dataset))]


def test_asvspoof2019_rows_say_unknown_where_the_corpus_is_silent(tmp_path):
    train = load_asvspoof2019_la(write_asvspoof2019_la(tmp_path), splits=("train",))["train"]
    assert row_values(train, "gender", "attack_tag", "codec", "codec_q", "attack") == [
        ("unknown", "unknown", "none", 0, "bonafide"),
        ("unknown", "unknown", "none", 0, "A01"),
    ]


def test_in_the_wild_rows_say_unknown_where_the_corpus_is_silent(tmp_path):
    write_in_the_wild(tmp_path)
    write_lines(tmp_path / "meta.csv", ["file,speaker,label", "0.wav,,spoof", "1.wav,Alec Guinness,bona-fide"])
    rows = load_in_the_wild(tmp_path)["eval"]
    assert row_values(rows, "speaker", "gender", "attack", "attack_tag", "codec", "codec_q") == [
        ("unknown", "unknown", "unknown", "unknown", "unknown", 0),
        ("Alec Guinness", "unknown", "bonafide", "unknown", "unknown", 0),
    ]


def test_csv_optional_columns_are_read_and_default_when_empty(tmp_path):
    for seed, name in enumerate("abc"):
        write_clip(tmp_path / f"{name}.wav", 0.1, seed=seed)
    header = "path,label,utt_id,speaker,gender,attack,attack_tag,codec,codec_q,codec_seed"
    lines = [header, "a.wav,0,ua,S1,F,A01,AC1,C00,-,seed_a", "b.wav,1,,,,,,,,", "c.wav,0,uc,,,,,mp3,2,"]
    rows = load_csv_dataset(write_lines(tmp_path / "list.csv", lines))["eval"]
    columns = ("utt_id", "speaker", "gender", "attack", "attack_tag", "codec", "codec_q", "codec_seed")
    assert row_values(rows, *columns) == [
        ("ua", "S1", "F", "A01", "AC1", "none", 0, "seed_a"),  # ASVspoof 5's C00 is "none"
        ("b", "unknown", "unknown", "bonafide", "unknown", "unknown", 0, "b"),
        ("uc", "unknown", "unknown", "unknown", "unknown", "mp3", 2, "uc"),
    ]


def test_csv_columns_it_does_not_know_are_logged_once_naming_the_file(tmp_path, caplog):
    lines = ["path,label,split,notes,score", "a.wav,1,train,x,1", "b.wav,0,dev,y,2", "c.wav,0,,z,3"]
    path = write_lines(tmp_path / "list.csv", lines)
    with caplog.at_level(logging.INFO, logger="training.data.protocols"):
        rows = read_label_csv(path)
    # `split` is read (it splits the rows), so the log must not call it ignored
    assert [r.getMessage() for r in caplog.records] == [f"{path}: ignoring the column(s) ['notes', 'score']"]
    assert [row["split"] for row in rows] == ["train", "dev", ""]


def test_csv_rows_without_a_split_column_carry_an_empty_split(tmp_path):
    rows = read_label_csv(write_lines(tmp_path / "list.csv", ["path,label", "a.wav,1", "b.wav,0"]))
    assert [row["split"] for row in rows] == ["", ""]  # the documented value, a string like every other field


def _open_in_a_latin1_locale(file, mode="r", buffering=-1, encoding=None, **options):
    """`open` as on a machine whose locale encoding is not UTF-8 (Windows' cp1252): latin-1 is the default."""
    return open(file, mode, buffering, encoding or "latin-1", **options)


def test_protocols_are_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """A path or a speaker name with a non-ASCII letter reads the same on every machine (not "ZoÃ«")."""
    monkeypatch.setattr(protocols, "open", _open_in_a_latin1_locale, raising=False)
    (tmp_path / "list.csv").write_text("path,label,speaker\nZoë/a.wav,1,Zoë Wanamaker\n", encoding="utf-8")
    rows = read_label_csv(tmp_path / "list.csv")
    assert (rows[0]["audio"], rows[0]["speaker"]) == ("Zoë/a.wav", "Zoë Wanamaker")
    (tmp_path / LA_TRAIN).write_text("Zoë LA_T_1 - - bonafide\n", encoding="utf-8")
    assert read_asvspoof2019_protocol(tmp_path / LA_TRAIN)[0]["speaker"] == "Zoë"


@pytest.mark.parametrize(
    "lines, message",
    [
        (["path,label", ",1"], r"list\.csv:2: empty 'path' field$"),
        (["path,label,codec,codec_q", "a.wav,0,mp3,high"], r"list\.csv:2: CODEC_Q must be an integer or '-', got"),
        (["path,label,attack", "a.wav,1,A01"], r"list\.csv:2: KEY is bonafide but the attack field is 'A01'$"),
        (["path,label,split", "a.wav,1,train", "b.wav,0"], r"list\.csv:3: expected 3 fields \(path,label,split\)$"),
    ],
    ids=["empty-path", "codec-q", "attack-of-a-bona-fide-row", "short-row"],
)
def test_csv_refusals_name_file_line_and_what_was_expected(tmp_path, lines, message):
    with pytest.raises(ProtocolError, match=message) as error:
        read_label_csv(write_lines(tmp_path / "list.csv", lines))
    assert error.value.path.endswith("list.csv") and error.value.line == int(message.split(":")[1])


def test_an_empty_in_the_wild_file_field_names_file_and_line(tmp_path):
    write_in_the_wild(tmp_path)
    write_lines(tmp_path / "meta.csv", ["file,speaker,label", "0.wav,A,spoof", ",B,spoof"])
    with pytest.raises(ProtocolError, match=r"meta\.csv:3: empty 'file' field$") as error:
        load_in_the_wild(tmp_path)
    assert error.value.path.endswith("meta.csv") and error.value.line == 3


def test_asvspoof2019_refusals_name_file_line_and_the_expected_columns(tmp_path):
    path = write_lines(tmp_path / LA_TRAIN, ["LA_0079 LA_T_1 - - bonafide", "LA_0079 LA_T_2 - A01 fake"])
    with pytest.raises(
        ProtocolError, match=r"trn\.txt:2: KEY \(column 5\) must be 'bonafide' or 'spoof', got 'fake'$"
    ):
        read_asvspoof2019_protocol(path)
    write_lines(path, ["LA_0079 LA_T_1 - bonafide"])
    message = r"trn\.txt:1: expected 5 columns \(SPEAKER_ID AUDIO_FILE_NAME - SYSTEM_ID KEY\), got 4: "
    with pytest.raises(ProtocolError, match=message) as error:
        read_asvspoof2019_protocol(path)
    assert error.value.line == 1


def test_asvspoof5_column_count_error_lists_the_release_columns(tmp_path):
    path = write_lines(tmp_path / "ASVspoof5.train.tsv", ["T_1 T_2 F - - - AC3 A05 spoof"])
    with pytest.raises(ProtocolError, match=rf"tsv:1: expected 10 columns \({' '.join(ASVSPOOF5_COLUMNS)}\), got 9"):
        read_asvspoof5_protocol(path)


def test_label_error_says_fractions_are_not_classes(tmp_path):
    path = write_lines(tmp_path / "list.csv", ["path,label", "a.wav,0.5"])
    message = (
        r"list\.csv:2: label '0\.5' is neither bonafide \(bonafide/bona-fide/1\) nor spoof \(spoof/0\); a fractional "
    )
    with pytest.raises(ProtocolError, match=message + r"or other number is not a class$"):
        read_label_csv(path)


def _rows(*entries):
    return [
        {"audio": audio, "label": label, "utt_id": f"u{i}", "line": i + 1} for i, (audio, label) in enumerate(entries)
    ]


def test_path_refusals_are_worded_as_documented(tmp_path):
    root = str(tmp_path / "flac_T")
    with pytest.raises(ProtocolError, match=r"may only name files inside its own split's folder$"):
        resolve_audio_paths(_rows(("../x.flac", 0)), tmp_path / "p.tsv", root, absolute_ok=False)
    with pytest.raises(
        ProtocolError, match=r"is listed again \(first on line 1 as 'u0'\); each file may appear once$"
    ):
        resolve_audio_paths(_rows(("a.flac", 0), ("./a.flac", 0)), tmp_path / "p.tsv", root, absolute_ok=False)
    with pytest.raises(ProtocolError, match=r"as 'u0'\) with the opposite label; each file may appear once$"):
        resolve_audio_paths(_rows(("a.flac", 0), ("./a.flac", 1)), tmp_path / "p.tsv", root, absolute_ok=False)


@pytest.mark.parametrize("folder", ["flac_T ", "flac_T\t"], ids=["trailing-space", "trailing-tab"])
def test_an_audio_folder_whose_name_ends_in_whitespace_keeps_its_files(tmp_path, folder):
    """Only the path separator is stripped from the root: a folder named "flac_T " is a folder of its own."""
    root = str(tmp_path / folder)
    rows = _rows(("a.flac", 0), ("sub/b.flac", 1))
    resolve_audio_paths(rows, tmp_path / "p.tsv", root, absolute_ok=False)
    assert [row["audio"] for row in rows] == [f"{root}/a.flac", f"{root}/sub/b.flac"]
    with pytest.raises(ProtocolError, match="outside the split's audio folder"):  # its sibling "flac_T" is outside
        resolve_audio_paths(_rows(("../flac_T/a.flac", 0)), tmp_path / "p.tsv", root, absolute_ok=False)


def test_audio_under_the_filesystem_root_is_inside_it():
    rows = _rows(("a.flac", 0))
    resolve_audio_paths(rows, "p.tsv", "/", absolute_ok=False)
    assert rows[0]["audio"] == "/a.flac"
