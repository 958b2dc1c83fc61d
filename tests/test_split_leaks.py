"""One clip, two splits (issue 19, item 6): a dev file that is a symlink to, a hard link to or a byte copy of a train
file, or an utterance id in two protocols, is refused at load, naming both files. Links and equal sizes that are not
leaks still load."""

import os
import shutil
from pathlib import Path

import pytest
from audio_fixtures import write_asvspoof5, write_asvspoof2019_la, write_clip, write_lines

from training.data.loaders import ProtocolError, load_asvspoof5, load_asvspoof2019_la, load_csv_dataset


TRAIN_CLIP = "flac_T/T_0000000011.flac"  # line 2 of the fixture's train protocol
DEV_CLIP = "flac_D/D_0000000190.flac"  # line 2 of the fixture's dev protocol
DEV_PROTOCOL = r"ASVspoof5\.dev\.track_1\.tsv:2"


def replace_with(path: Path, make) -> None:
    path.unlink()
    make(path)


@pytest.mark.parametrize(
    "disguise, message",
    [
        ("symlink", "is the same file as"),
        ("relative-symlink", "is the same file as"),
        ("hardlink", "is the same file as"),
        ("copy", "has the same content as"),
    ],
)
def test_a_dev_clip_that_is_a_train_clip_is_refused_naming_both_files(tmp_path, disguise, message):
    write_asvspoof5(tmp_path)
    train, dev = tmp_path / TRAIN_CLIP, tmp_path / DEV_CLIP
    makers = {
        "symlink": lambda path: path.symlink_to(train),
        "relative-symlink": lambda path: path.symlink_to(Path("..") / TRAIN_CLIP),
        "hardlink": lambda path: os.link(train, path),
        "copy": lambda path: shutil.copyfile(train, path),
    }
    replace_with(dev, makers[disguise])
    pattern = rf"{DEV_PROTOCOL}: {dev} {message} {train} of the 'train' split \(.*train\.tsv:2\); a clip may be used"
    with pytest.raises(ProtocolError, match=pattern):
        load_asvspoof5(tmp_path, splits=("train", "dev"))
    assert len(load_asvspoof5(tmp_path, splits=("dev",))["dev"]) == 2  # one split alone has nothing to leak into


def test_a_symlinked_split_folder_is_refused(tmp_path):
    """flac_D/ a link to a folder holding the train clips under dev names: every clip is a train clip."""
    write_asvspoof5(tmp_path)
    shared = tmp_path / "shared"
    shutil.copytree(tmp_path / "flac_T", shared)
    shutil.rmtree(tmp_path / "flac_T")
    (tmp_path / "flac_T").symlink_to(shared)
    (shared / "D_0000000001.flac").symlink_to(shared / "T_0000000000.flac")
    (shared / "D_0000000190.flac").symlink_to(shared / "T_0000000012.flac")
    shutil.rmtree(tmp_path / "flac_D")
    (tmp_path / "flac_D").symlink_to(shared)
    with pytest.raises(ProtocolError, match=r"dev\.track_1\.tsv:1: .*D_0000000001\.flac is the same file as"):
        load_asvspoof5(tmp_path, splits=("train", "dev"))


def test_an_utterance_id_in_two_protocols_is_refused_naming_both_files(tmp_path):
    write_asvspoof5(tmp_path)
    write_clip(tmp_path / "flac_D" / "T_0000000011.flac", 0.4, seed=99)  # another file, a train id
    write_lines(tmp_path / "ASVspoof5.dev.track_1.tsv", ["D_0062 T_0000000011 F - - - - bonafide bonafide -"])
    pattern = (
        rf"dev\.track_1\.tsv:1: utterance id 'T_0000000011' of {tmp_path}/flac_D/T_0000000011\.flac is also "
        rf"{tmp_path}/flac_T/T_0000000011\.flac of the 'train' split \(.*train\.tsv:2\)"
    )
    with pytest.raises(ProtocolError, match=pattern):
        load_asvspoof5(tmp_path, splits=("train", "dev"))


def test_asvspoof2019_eval_copy_of_a_dev_clip_is_refused(tmp_path):
    write_asvspoof2019_la(tmp_path)
    la = tmp_path / "LA"
    dev, evaluation = (
        la / "ASVspoof2019_LA_dev/flac/LA_D_1047731.flac",
        la / "ASVspoof2019_LA_eval/flac/LA_E_8877452.flac",
    )
    shutil.copyfile(dev, evaluation)
    with pytest.raises(ProtocolError, match=rf"eval\.trl\.txt:2: {evaluation} has the same content as {dev}"):
        load_asvspoof2019_la(tmp_path)


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def csv_corpus(tmp_path: Path, train: bytes, evaluation: bytes) -> Path:
    write_bytes(tmp_path / "a.wav", train)
    write_bytes(tmp_path / "b.wav", evaluation)
    return write_lines(tmp_path / "list.csv", ["path,label,split", "a.wav,1,train", "b.wav,0,eval"])


BLOCK = bytes(range(256)) * 400  # 100 KiB: larger than the 2 x 4 KiB fingerprint


def test_csv_splits_with_a_byte_identical_file_are_refused(tmp_path):
    with pytest.raises(ProtocolError, match=r"list\.csv:3: .*b\.wav has the same content as .*a\.wav of the 'train'"):
        load_csv_dataset(csv_corpus(tmp_path, BLOCK, BLOCK))


def test_equal_sizes_and_equal_fingerprints_are_not_a_copy_when_another_byte_differs(tmp_path):
    """Only the whole-file digest decides: these agree in the first 4 KiB and at the middle, not at 3/4."""
    other = bytearray(BLOCK)
    other[3 * len(BLOCK) // 4] ^= 1
    corpus = load_csv_dataset(csv_corpus(tmp_path, BLOCK, bytes(other)))
    assert {name: len(split) for name, split in corpus.items()} == {"train": 1, "eval": 1}


def test_equal_sizes_with_other_content_load(tmp_path):
    first = write_clip(tmp_path / "x.wav", 0.5, seed=1)
    write_clip(tmp_path / "y.wav", 0.5, seed=2)
    assert len(first) and (tmp_path / "x.wav").stat().st_size == (tmp_path / "y.wav").stat().st_size
    write_lines(tmp_path / "list.csv", ["path,label,split", "x.wav,1,train", "y.wav,0,eval"])
    assert len(load_csv_dataset(tmp_path / "list.csv")["eval"]) == 1


def test_a_symlink_across_csv_splits_is_refused(tmp_path):
    write_bytes(tmp_path / "a.wav", BLOCK)
    (tmp_path / "b.wav").symlink_to(tmp_path / "a.wav")
    write_lines(tmp_path / "list.csv", ["path,label,split", "a.wav,1,train", "b.wav,1,eval"])
    with pytest.raises(ProtocolError, match=r"list\.csv:3: .*b\.wav is the same file as .*a\.wav of the 'train'"):
        load_csv_dataset(tmp_path / "list.csv")


def test_links_and_copies_inside_one_split_still_load(tmp_path):
    """The release and the data-scale bench link clips within a split; that is no leak."""
    write_asvspoof5(tmp_path)
    train = tmp_path / "flac_T"
    replace_with(train / "T_0000000012.flac", lambda path: path.symlink_to(train / "T_0000000000.flac"))
    shutil.copyfile(train / "T_0000000000.flac", train / "T_0000000011.flac")
    assert len(load_asvspoof5(tmp_path, splits=("train", "dev", "eval"))["train"]) == 3
