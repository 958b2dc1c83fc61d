"""The data-scale loader of issue 12 §6 in a small shape: a synthetic ASVspoof 5 train protocol (5,000 rows here,
182,357 in `bench/bench_loader.py`) loads into an Arrow-backed split with every row and column, the result keeps no
per-row Python objects alive, and the collator batches it. Times are the bench's business, never asserted here."""

import gc
import tracemalloc

import pyarrow as pa
import pytest
import torch

from bench.bench_loader import BATCH, CROP, collate_speed, measure_load, write_asvspoof5_scale
from training.data.loaders import FEATURES, AudioCollator, load_asvspoof5


ROWS = 5_000


@pytest.fixture(scope="module")
def scale_root(tmp_path_factory):
    return write_asvspoof5_scale(tmp_path_factory.mktemp("asvspoof5_scale"), ROWS, real_files=3, seconds=1.0)


@pytest.mark.slow
def test_synthetic_protocol_loads_every_row_into_arrow(scale_root):
    data = load_asvspoof5(scale_root, splits=("train",))["train"]
    assert len(data) == ROWS and data.column_names == list(FEATURES)
    assert isinstance(data.data.table, pa.Table) and data.data.table.num_rows == ROWS
    labels = data.data.table.column("label").to_numpy()
    assert int(labels.sum()) == ROWS // 10  # every 10th row is bona fide
    assert set(data.unique("attack")) == {"bonafide", *(f"A{i:02d}" for i in range(1, 9))}
    assert data[ROWS - 1]["utt_id"] == f"T_{ROWS - 1:010d}"
    assert data[7]["codec"] == "C08" and data[7]["codec_seed"] == "T_0000000006"


@pytest.mark.slow
def test_loaded_split_keeps_no_per_row_python_objects(scale_root):
    load_asvspoof5(scale_root, splits=("train",))  # warm imports and caches outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        data = load_asvspoof5(scale_root, splits=("train",))["train"]
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == ROWS
    # One dict per row would keep > 1 KiB per row (5 MiB here); Arrow buffers are not on the Python heap.
    assert kept < 256 * 1024, f"{kept / 2**20:.2f} MiB of Python objects kept for {ROWS} rows"
    assert peak > kept  # the rows existed while parsing, and were freed


@pytest.mark.slow
def test_collator_batches_the_synthetic_split_with_a_worker(scale_root):
    data = load_asvspoof5(scale_root, splits=("train",))["train"]
    assert collate_speed(data, workers=1, batches=1) > 0  # runs a real worker; the value itself is not checked
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, collate_fn=AudioCollator())
    batch = next(iter(loader))
    assert batch["input_values"].shape == (BATCH, CROP) and batch["labels"].tolist()[:2] == [1, 0]


@pytest.mark.slow
def test_bench_load_measurement_runs_in_a_fresh_process(scale_root):
    result = measure_load(scale_root, trace=True)
    assert result["rows"] == ROWS and result["table"] == "pyarrow.lib.Table"
    # A cold process keeps ~0.9 MiB of first-call state (lazy imports, caches) whatever the row count; 5,000 row
    # dicts would add more than 5 MiB on top.
    assert result["python_kept_mib"] < 2 < result["python_peak_mib"]
