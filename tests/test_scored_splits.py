"""Splits that training scores (issue 19, item 6): a dev (or eval) split with one class, or with a clip shorter than
one frame of the model, is refused when the corpus is loaded, naming the protocol file and line, instead of killing
the run at its first evaluation."""

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import write_clip, write_lines
from train_fixtures import PREFIX, tiny_run_args, write_synthetic_asvspoof5

from training.data.loaders import ProtocolError, ScoredSplit, load_csv_dataset
from training.trainer.config import parse_train_config
from training.trainer.loop import setup_run


def csv_corpus(tmp_path, dev_rows: list[str]):
    for seed, name in enumerate(("a", "b", "c", "d")):
        write_clip(tmp_path / f"{name}.wav", 0.1, seed=seed)
    return write_lines(tmp_path / "list.csv", ["path,label,split", "a.wav,1,train", "b.wav,0,train", *dev_rows])


@pytest.mark.parametrize("rate, samples, at_model_rate", [(16_000, 10, 10), (8_000, 150, 300)])
def test_a_clip_shorter_than_the_model_minimum_is_refused_naming_file_and_line(tmp_path, rate, samples, at_model_rate):
    sf.write(tmp_path / "short.wav", np.full(samples, 0.1), rate, subtype="PCM_16")
    path = csv_corpus(tmp_path, ["c.wav,1,dev", "short.wav,0,dev", "d.wav,0,dev"])
    message = rf"list\.csv:5: {tmp_path}/short\.wav holds {at_model_rate} samples at 16000 Hz, fewer than the 400"
    with pytest.raises(ProtocolError, match=message):
        load_csv_dataset(path, scored_splits={"dev": ScoredSplit(min_samples=400)})
    assert len(load_csv_dataset(path, scored_splits={"dev": ScoredSplit(min_samples=at_model_rate)})["dev"]) == 3
    assert len(load_csv_dataset(path)["dev"]) == 3  # nothing is scored: nothing is required


def test_a_dev_split_with_one_class_is_refused_naming_the_protocol(tmp_path):
    path = csv_corpus(tmp_path, ["c.wav,0,dev", "d.wav,0,dev"])
    with pytest.raises(ProtocolError, match=r"list\.csv: the 'dev' split holds only spoof clips \(2\); .*both"):
        load_csv_dataset(path, scored_splits={"dev": ScoredSplit()})
    assert load_csv_dataset(path, scored_splits={"train": ScoredSplit()})["dev"]["label"] == [0, 0]


def _run_config(corpus, tmp_path, *extra):
    return parse_train_config(tiny_run_args(corpus, tmp_path / "run", "--max_steps", "1", *extra))


def test_training_refuses_a_too_short_dev_clip_before_it_starts(tmp_path):
    """The tiny backbone needs 400 samples per frame; a 10-sample dev clip is refused by the run's setup."""
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2)
    _, folder, protocol = PREFIX["dev"]
    sf.write(corpus / folder / "D_0000000001.flac", np.full(10, 0.1), 16_000, subtype="PCM_16")
    message = rf"{protocol}:2: {corpus}/{folder}/D_0000000001\.flac holds 10 samples at 16000 Hz, fewer than the 400"
    with pytest.raises(ProtocolError, match=message):
        setup_run(_run_config(corpus, tmp_path))


@pytest.mark.parametrize("split", ["dev", "eval"])
def test_training_refuses_a_one_class_dev_or_eval_split_before_it_starts(tmp_path, split):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2)
    _, _, protocol = PREFIX[split]
    lines = (corpus / protocol).read_text().splitlines()
    (corpus / protocol).write_text("\n".join(line for line in lines if "bonafide bonafide" not in line) + "\n")
    with pytest.raises(ProtocolError, match=rf"{protocol}: the '{split}' split holds only spoof clips"):
        setup_run(_run_config(corpus, tmp_path))


def test_a_dev_subset_left_with_one_class_is_refused_naming_max_eval_samples(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2)
    with pytest.raises(ValueError, match=r"`max_eval_samples` 1 leaves the 'dev' split with only .* clips"):
        setup_run(_run_config(corpus, tmp_path, "--max_eval_samples", "1"))
