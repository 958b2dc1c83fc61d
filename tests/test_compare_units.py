"""The comparison's bookkeeping, without training (issue 19's mutation audit): known and unseen columns are not
swapped anywhere (MFCC rows, neural rows, the table), ± is the sample standard deviation over seeds, and the minimum
router entropy is the most collapsed block's, not the first block's."""

import itertools
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from train_fixtures import write_synthetic_asvspoof5

from training import compare


def _fake_clock(monkeypatch, step: float = 12.34) -> None:
    """compare's clock advances `step` seconds per reading: a run lasts 12.34 s, reported to 0.1 s as 12.3."""
    readings = itertools.count(100.0, step)
    monkeypatch.setattr(compare, "time", SimpleNamespace(time=lambda: next(readings)))


def test_summary_is_the_mean_and_the_sample_standard_deviation_over_seeds():
    runs = [{"dev_eer": 0.1, "eval_known_eer": None}, {"dev_eer": 0.3, "eval_known_eer": 0.2}, {"dev_eer": 0.5}]
    summary = compare.summarise(runs)
    assert summary["dev_eer"]["mean"] == pytest.approx(0.3)
    assert summary["dev_eer"]["std"] == pytest.approx(0.2) == pytest.approx(statistics.stdev([0.1, 0.3, 0.5]))
    assert summary["eval_known_eer"] == {"mean": 0.2, "std": 0.0}  # one seed reported it: no spread
    assert "eval_unseen_eer" not in summary


def test_entropy_columns_take_the_most_collapsed_block_not_the_first():
    balance = {"block_0": {"entropy_nats": 1.2}, "block_1": {"entropy_nats": 0.3}, "block_2": {"entropy_nats": 0.9}}
    assert compare.entropy_columns(balance) == {"router_entropy": pytest.approx(0.8), "min_router_entropy": 0.3}


def _cells(table: str, row: int) -> dict[str, str]:
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return dict(zip(header, (cell.strip() for cell in lines[row].strip("|").split("|")), strict=True))


def test_the_table_puts_known_and_unseen_under_their_own_headers():
    runs = [
        {"seed": s, "dev_eer": 0.1, "dev_min_dcf": 0.2, "eval_known_eer": 0.05, "eval_unseen_eer": 0.4} for s in (0, 1)
    ]
    runs[1] |= {"eval_known_eer": 0.07, "router_entropy": 1.0, "min_router_entropy": 0.5}
    runs[0] |= {"router_entropy": 1.2, "min_router_entropy": 0.7}
    cells = _cells(compare.table({"molex_e8k2": {"summary": compare.summarise(runs)}}), 2)
    assert cells["system"] == "MoLEx E=8, k=2"
    assert cells["eval EER known (%)"] == "6.0 ± 1.4" and cells["eval EER unseen (%)"] == "40.0 ± 0.0"
    assert cells["dev EER (%)"] == "10.0 ± 0.0" and cells["dev minDCF"] == "0.200 ± 0.000"
    assert cells["router entropy mean / min (nats)"] == "1.10 ± 0.14 / 0.60 ± 0.14"


def test_a_neural_row_reads_known_and_unseen_from_their_own_metrics(tmp_path, monkeypatch):
    metrics = {"dev": {"eer": 0.1, "min_dcf": 0.2}, "eval_known_attacks": {"eer": 0.05}}
    metrics["eval_unseen_attacks"] = {"eer": 0.4}
    monkeypatch.setattr(compare.train, "main", lambda argv: {"metrics": metrics})
    monkeypatch.setattr(compare, "trainable_parameters", lambda config: 123)
    _fake_clock(monkeypatch)
    argv = ["--backbone", "tiny-random", "--data_root", str(tmp_path)]
    # single LoRA has no choice of experts: no entropy pass
    row = compare.run_neural("single_lora", 0, argv, tmp_path / "out", compare.ROWS["single_lora"][1])
    assert row == {"dev_eer": 0.1, "dev_min_dcf": 0.2, "eval_known_eer": 0.05, "eval_unseen_eer": 0.4,
                   "trainable_parameters": 123, "train_seconds": 12.3}  # fmt: skip


def test_the_mfcc_row_scores_known_and_unseen_attacks_separately(tmp_path):
    """Eval holds A01 (a training attack) and A04 (unseen). Scores rank every A01 spoof above every bona fide clip
    (EER 1) and every A04 spoof below (EER 0): a swap of the two columns shows."""
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    argv = ["--backbone", "tiny-random", "--data_root", str(corpus)]
    data = compare.load_corpus(compare.parse_train_config([*argv, "--seed", "0"]))
    level = {"bonafide": 0.0, "A01": 1.0, "A04": -1.0, "A03": -1.0}  # A03: the dev attack
    scores = {
        split: {u: level[a] for u, a in zip(data[split]["utt_id"], data[split]["attack"], strict=True)}
        for split in ("dev", "eval")
    }
    mfcc = {**scores, "known_attacks": ["A01", "A02"], "parameters": 7, "seconds": 1.0}
    row = compare.run_mfcc(0, argv, mfcc)
    assert (row["eval_known_eer"], row["eval_unseen_eer"]) == (1.0, 0.0)
    assert row["dev_eer"] == 0.0 and row["trainable_parameters"] == 7
    assert set(row) == {"dev_eer", "dev_min_dcf", "eval_known_eer", "eval_unseen_eer", "trainable_parameters",
                        "train_seconds"} and row["train_seconds"] == 1.0  # fmt: skip
    no_known = compare.run_mfcc(0, argv, {**mfcc, "known_attacks": []})  # no known spoof: no known EER
    assert no_known["eval_known_eer"] is None and no_known["eval_unseen_eer"] == 0.5


def test_mfcc_known_attacks_are_the_training_attacks_and_the_configured_ones(monkeypatch):
    data = {
        "train": {"utt_id": ["t1", "t2", "t3"], "attack": ["bonafide", "A01", "A02"]},
        "dev": {"utt_id": ["d1"], "attack": ["A03"]},
        "eval": {"utt_id": ["e1", "e2"], "attack": ["A07", "A10"]},
    }
    scores = {"dev": np.array([0.5]), "eval": np.array([1.0, -1.0])}
    calls = []
    monkeypatch.setattr(compare, "fit_and_score", lambda *args, **kw: calls.append((args, kw)) or (data, scores, 14))
    _fake_clock(monkeypatch)
    result = compare.mfcc_lr_scores("corpus", ["A07"])
    assert calls == [(("corpus", ["mfcc"]), {"l2": 1.0})]
    assert result["known_attacks"] == ["A01", "A02", "A07"]
    assert result["eval"] == {"e1": 1.0, "e2": -1.0} and result["dev"] == {"d1": 0.5} and result["parameters"] == 14
    assert result["seconds"] == 12.3 and isinstance(result["seconds"], float)  # the fit's time, to 0.1 s
    scores["eval"] = np.array([1.0])  # one score for two eval clips
    with pytest.raises(ValueError):
        compare.mfcc_lr_scores("corpus", [])


def test_overrides_become_train_arguments_lists_spread_out():
    assert compare._argv({"rank": 8, "target_modules": ["q_proj", "v_proj"]}) == [
        "--rank", "8", "--target_modules", "q_proj", "v_proj",
    ]  # fmt: skip


def test_full_fine_tuning_scales_the_learning_rate_without_changing_the_row_table():
    declared = dict(compare.ROWS["full_finetune"][1])
    assert compare.row_overrides("full_finetune", 2e-3, 0.25) == {**declared, "learning_rate": 5e-4}
    assert compare.ROWS["full_finetune"][1] == declared
    assert compare.row_overrides("molex_e8k2", 2e-3, 0.25) is compare.ROWS["molex_e8k2"][1]


def test_the_table_shows_parameters_run_time_and_n_a_where_a_row_has_none():
    runs = [{"seed": 0, "dev_eer": 0.1, "trainable_parameters": 1234567, "train_seconds": 12.3}]
    runs.append({"seed": 1, "dev_eer": 0.1, "trainable_parameters": 1234567, "train_seconds": 14.3})
    table = compare.table({"single_lora": {"summary": compare.summarise(runs)}, "mfcc_lr": {"summary": {}}})
    assert table.splitlines()[1] == "|---|---|---|---|---|---|---|---|"
    cells = _cells(table, 2)
    assert (cells["trainable params"], cells["run time (s)"]) == ("1,234,567", "13 ± 1")
    assert cells["router entropy mean / min (nats)"] == "n/a" and cells["eval EER known (%)"] == "n/a"
    assert set(_cells(table, 3).values()) == {"MFCC + LR", "n/a"}


def _fake_neural_run(calls: list):
    def run(row, seed, base_argv, output_dir, overrides):
        calls.append((row, seed, base_argv, overrides, output_dir))
        return {"dev_eer": 0.1 * (seed + 1), "eval_unseen_eer": 0.3, "trainable_parameters": 10, "train_seconds": 1.0}

    return run


def test_main_runs_every_row_and_seed_with_the_shared_settings_and_writes_results_and_table(
    tmp_path, monkeypatch, capsys
):
    calls, mfcc_calls, mfcc_argv = [], [], []
    monkeypatch.setattr(compare, "run_neural", _fake_neural_run(calls))
    monkeypatch.setattr(compare, "mfcc_lr_scores", lambda corpus, known: mfcc_calls.append((corpus, known)) or {})
    monkeypatch.setattr(
        compare,
        "run_mfcc",
        lambda seed, argv, scores: mfcc_argv.append(argv) or {"dev_eer": 0.2, "train_seconds": 2.0},
    )
    config = tmp_path / "c.yaml"
    config.write_text("data_root: /corpus\nknown_attacks: [A07]\nlearning_rate: 0.002\n")
    output = tmp_path / "out"
    results = compare.main(["--config", str(config), "--output_dir", str(output), "--seeds", "3", "4", "--rows",
                            "mfcc_lr", "full_finetune", "--max_steps", "7", "--crop_samples", "800",
                            "--batch_size", "2", "--max_eval_samples", "9", "--full_finetune_lr_scale", "0.5",
                            "--train_args", "--rank", "2"])  # fmt: skip
    assert mfcc_calls == [("/corpus", ["A07"])]
    assert [(row, seed) for row, seed, *_ in calls] == [("full_finetune", 3), ("full_finetune", 4)]
    assert {call[4] for call in calls} == {output}  # each run's folder goes under --output_dir
    base_argv = calls[0][2]
    assert mfcc_argv == [base_argv, base_argv]  # MFCC + LR scores the subsets of the neural rows' settings
    assert base_argv[:2] == ["--config", str(config)] and base_argv[-2:] == ["--rank", "2"]
    settings = dict(zip(base_argv[2:-2:2], base_argv[3:-2:2], strict=True))
    assert settings == {"--data_root": "/corpus", "--max_steps": "7", "--crop_samples": "800", "--batch_size": "2",
                        "--max_eval_samples": "9", "--eval_every_steps": "0", "--early_stopping_patience": "0",
                        "--log_with": "none", "--save_total_limit": "1", "--calibrate": "False"}  # fmt: skip
    assert calls[0][3]["learning_rate"] == pytest.approx(0.002 * 0.5)
    saved = json.loads((output / "results.json").read_text())
    numbers = {key: saved["settings"][key] for key in ("max_steps", "crop_samples", "batch_size", "max_eval_samples")}
    assert numbers == {
        "max_steps": 7,
        "crop_samples": 800,
        "batch_size": 2,
        "max_eval_samples": 9,
    }  # numbers, not text
    assert saved == json.loads(json.dumps(results)) and list(saved["rows"]) == ["mfcc_lr", "full_finetune"]
    assert saved["settings"]["seeds"] == [3, 4] and saved["settings"]["config"] == str(config)
    row = saved["rows"]["full_finetune"]
    assert row["label"] == compare.ROWS["full_finetune"][0] and row["overrides"] == calls[0][3]
    assert [run["seed"] for run in row["runs"]] == [3, 4]
    assert row["summary"]["dev_eer"]["mean"] == pytest.approx(0.45)  # seeds 3, 4: 0.4, 0.5
    assert (output / "table.md").read_text() == compare.table(results["rows"]) + "\n"
    printed = capsys.readouterr().out.splitlines()
    progress = [line for line in printed if line.startswith("[compare] ")]
    assert progress == [
        f"[compare] {name} seed {run['seed']}: {json.dumps({k: v for k, v in run.items() if k != 'seed'})}"
        for name in ("mfcc_lr", "full_finetune")
        for run in saved["rows"][name]["runs"]
    ]
    assert printed[len(progress) :] == compare.table(results["rows"]).splitlines()  # then the table


def test_a_row_name_that_is_not_a_row_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(compare, "run_neural", _fake_neural_run(calls))
    config = tmp_path / "c.yaml"
    config.write_text("data_root: /corpus\n")
    argv = ["--config", str(config), "--output_dir", str(tmp_path / "out"), "--rows", "single_lora", "molex_e8k3"]
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 2 and "invalid choice: 'molex_e8k3'" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "out" / "results.json").exists()


def test_main_keeps_the_rows_finished_before_a_failure(tmp_path, monkeypatch):
    def run(row, seed, base_argv, output_dir, overrides):
        if row == "molex_e4k1":
            raise RuntimeError("out of memory")
        return {"dev_eer": 0.1}

    monkeypatch.setattr(compare, "run_neural", run)
    config = tmp_path / "c.yaml"
    config.write_text("data_root: /corpus\n")
    argv = [
        "--config",
        str(config),
        "--output_dir",
        str(tmp_path),
        "--seeds",
        "0",
        "--rows",
        "single_lora",
        "molex_e4k1",
    ]
    with pytest.raises(RuntimeError, match="out of memory"):
        compare.main(argv)
    assert list(json.loads((tmp_path / "results.json").read_text())["rows"]) == ["single_lora"]


def test_merge_joins_runs_split_over_processes_in_the_declared_row_order(tmp_path, capsys):
    settings = {"max_steps": 5}
    parts = {"a": {"molex_e4k1": {"summary": {"dev_eer": {"mean": 0.2, "std": 0.0}}}},
             "b": {"mfcc_lr": {"summary": {"dev_eer": {"mean": 0.3, "std": 0.0}}}}}  # fmt: skip
    for name, rows in parts.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    merged = compare.main(
        ["--output_dir", str(tmp_path / "m"), "--merge_from", str(tmp_path / "a"), str(tmp_path / "b")]
    )
    assert merged == {"settings": settings, "rows": {**parts["b"], **parts["a"]}}  # ROWS order: mfcc_lr first
    assert list(json.loads((tmp_path / "m" / "results.json").read_text())["rows"]) == ["mfcc_lr", "molex_e4k1"]
    assert (tmp_path / "m" / "table.md").read_text() == compare.table(merged["rows"]) + "\n"
    assert capsys.readouterr().out == compare.table(merged["rows"]) + "\n"
    (tmp_path / "b" / "results.json").write_text(json.dumps({"settings": {"max_steps": 6}, "rows": {}}))
    with pytest.raises(ValueError, match=r"b/results\.json was run with other settings: \{'max_steps': 6\} != "):
        compare.main(["--output_dir", str(tmp_path / "m"), "--merge_from", str(tmp_path / "a"), str(tmp_path / "b")])


def test_a_rerun_of_a_neural_row_reuses_its_folder_and_passes_seed_output_and_model_folder(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        compare.train,
        "main",
        lambda argv: seen.update(argv=argv) or {"metrics": {"dev": {"eer": 0.1, "min_dcf": 0.2}}},
    )
    monkeypatch.setattr(compare, "trainable_parameters", lambda config: seen.update(parameters_of=config) or 5)
    monkeypatch.setattr(
        compare, "router_entropies", lambda config, folder: seen.update(folder=folder) or {"router_entropy": 1.0}
    )
    argv = ["--backbone", "tiny-random", "--data_root", str(tmp_path)]
    for _ in range(2):  # the second run finds seed2/ already there
        row = compare.run_neural("molex_e4k1", 2, argv, tmp_path / "out", compare.ROWS["molex_e4k1"][1])
    folder = tmp_path / "out" / "molex_e4k1" / "seed2"
    assert folder.is_dir() and seen["folder"] == folder / "model" and seen["parameters_of"].seed == 2
    assert seen["argv"][-4:] == ["--seed", "2", "--output_dir", str(folder)] and "--num_experts" in seen["argv"]
    assert row["router_entropy"] == 1.0 and row["eval_known_eer"] is None and row["trainable_parameters"] == 5
    assert isinstance(row["train_seconds"], float) and 0 <= row["train_seconds"] < 60


def test_router_entropies_of_a_trained_model_on_the_eval_subset(tmp_path, monkeypatch):
    """A tiny MoLEx model, scored on the run's eval subset: the columns equal router_balance of its expert usage;
    rows without a choice of experts get none."""
    from accelerate import Accelerator

    from training.analysis.analyze_experts import router_balance
    from training.metrics.scoring import score_dataset

    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2, seconds=0.3)
    argv = ["--backbone", "tiny-random", "--data_root", str(corpus), "--output_dir", str(tmp_path / "run")]
    argv += ["--num_experts", "4", "--top_k", "2", "--rank", "2", "--eval_batch_size", "3", "--head_hidden_size", "8"]
    config = compare.parse_train_config(argv)
    model = compare.build_model(config, Accelerator(cpu=True))
    model.save_pretrained(tmp_path / "model")
    batch_sizes = []

    def recording_score_dataset(model, dataset, batch_size=8, **options):
        batch_sizes.append(batch_size)
        return score_dataset(model, dataset, batch_size, **options)

    monkeypatch.setattr(compare, "score_dataset", recording_score_dataset)
    columns = compare.router_entropies(config, tmp_path / "model")
    assert batch_sizes == [3]  # the configured --eval_batch_size (sized to fit memory), not score_dataset's 8
    evaluation = compare.load_corpus(config)["eval"]
    usage = score_dataset(model.eval(), evaluation, 3, with_usage=True).expert_usage
    expected = compare.entropy_columns(router_balance(usage, model.router_names, 2))
    assert columns == pytest.approx(expected) and 0 < columns["min_router_entropy"] <= columns["router_entropy"]
    dev_usage = score_dataset(model, compare.load_corpus(config)["dev"], 3, with_usage=True).expert_usage
    assert compare.entropy_columns(router_balance(dev_usage, model.router_names, 2)) != pytest.approx(expected)
    for other in (["--trainable", "head"], ["--num_experts", "2"]):
        assert compare.router_entropies(compare.parse_train_config([*argv, *other]), tmp_path / "model") == {}


def test_trainable_parameters_count_what_the_row_trains(tmp_path):
    argv = ["--backbone", "tiny-random", "--data_root", str(tmp_path), "--output_dir", str(tmp_path)]
    config = compare.parse_train_config([*argv, "--trainable", "head", "--head_hidden_size", "8"])
    model = compare.build_model(config, __import__("accelerate").Accelerator(cpu=True))
    back_end = [model.layer_sum, model.pooling, model.classifier]
    assert compare.trainable_parameters(config) == sum(p.numel() for m in back_end for p in m.parameters())


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one device / precision state per process; start and leave this test with none."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize(
    "options, precision, device",
    [(["--mixed_precision", "bf16"], "bf16", "meta"), (["--cpu", "True"], "no", "cpu")],
    ids=["bf16-on-the-gpu", "forced-cpu"],
)
def test_counting_a_rows_parameters_leaves_the_run_its_own_precision_and_device(
    tmp_path, monkeypatch, fresh_accelerate_state, options, precision, device
):
    """`run_neural` counts the parameters, then `train.main` builds its Accelerator in the same process. accelerate's
    state is per process, so the count must ask for the run's own settings: a `cpu=True` there refused every bf16 /
    fp16 row ("AcceleratorState has already been initialized") and pinned every row to the CPU on a GPU machine
    (the GPU stood in for by the `meta` device, which accelerate picks by default here)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "default_device", property(lambda state: torch.device("meta")))
    argv = ["--backbone", "tiny-random", "--data_root", str(tmp_path), "--output_dir", str(tmp_path)]
    config = compare.parse_train_config([*argv, *options, "--head_hidden_size", "8"])
    assert compare.trainable_parameters(config) > 0
    run = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)  # as `setup_run` builds it
    assert run.mixed_precision == precision and run.device.type == device


def test_the_linear_probe_row_fits_on_train_and_scores_dev_and_eval_by_utterance(tmp_path, monkeypatch):
    data = {
        "train": {"utt_id": ["t1", "t2", "t3"], "attack": ["bonafide", "A01", "A02"], "label": [1, 0, 0]},
        "dev": {"utt_id": ["d1"], "attack": ["A03"], "label": [0]},
        "eval": {"utt_id": ["e1", "e2"], "attack": ["A07", "bonafide"], "label": [0, 1]},
    }
    calls = []
    monkeypatch.setattr(compare, "resolve_named_backbone", lambda name, folder: calls.append((name, folder)) or "bb")
    monkeypatch.setattr(
        compare.linear_probe, "load_encoder", lambda folder, random_init: ("encoder", folder, random_init)
    )
    monkeypatch.setattr(compare, "load_asvspoof5", lambda corpus, splits: calls.append((corpus, splits)) or data)
    monkeypatch.setattr(compare, "audio_paths", lambda split: [f"{u}.flac" for u in split["utt_id"]])

    def embed(encoder, paths):
        assert encoder == ("encoder", "bb", False)
        return {"layer_concat": np.ones((len(paths), 6)), "mean": np.zeros((len(paths), 2))}

    def fit_probe(features, labels, l2):
        calls.append(({split: f.shape for split, f in features.items()}, labels.tolist(), l2))
        return {"train": np.zeros(3), "dev": np.array([0.25]), "eval": np.array([-1.0, 2.0])}

    monkeypatch.setattr(compare.linear_probe, "embed", embed)
    monkeypatch.setattr(compare.linear_probe, "fit_probe", fit_probe)
    _fake_clock(monkeypatch)
    result = compare.linear_probe_scores("tiny-random", "corpus", ["A07"], tmp_path)
    assert calls == [
        ("tiny-random", tmp_path / "linear_probe"),
        ("corpus", ("train", "dev", "eval")),
        ({"train": (3, 6), "dev": (1, 6), "eval": (2, 6)}, [1, 0, 0], 100.0),
    ]
    assert result["dev"] == {"d1": 0.25} and result["eval"] == {"e1": -1.0, "e2": 2.0}
    assert result["known_attacks"] == ["A01", "A02", "A07"] and result["parameters"] == 7  # 6 weights + a bias
    assert result["seconds"] == 12.3 and isinstance(result["seconds"], float)
    data["eval"]["utt_id"].append("e3")  # one score short
    with pytest.raises(ValueError):
        compare.linear_probe_scores("tiny-random", "corpus", [], tmp_path)


def test_main_defaults_are_the_documented_comparison(tmp_path, monkeypatch):
    """Three seeds, the paper's rows, 120 steps of 1 s crops in batches of 16, 300-clip eval subsets, full
    fine-tuning at a quarter of the config's learning rate; outputs/compare under the working folder."""
    calls = []
    monkeypatch.setattr(compare, "run_neural", _fake_neural_run(calls))
    monkeypatch.setattr(compare, "mfcc_lr_scores", lambda corpus, known: {"corpus": corpus})
    probe_calls = []
    monkeypatch.setattr(
        compare,
        "linear_probe_scores",
        lambda *args: probe_calls.append(args) or {"backbone": args[0]},
    )
    fixed = []
    monkeypatch.setattr(compare, "run_mfcc", lambda seed, argv, scores: fixed.append((seed, scores, argv)) or {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(
        "data_root: /corpus\nbackbone: tiny-random\nknown_attacks: [A07]\n"
    )
    results = compare.main([])
    assert probe_calls == [("tiny-random", "/corpus", ["A07"], Path("outputs/compare"))]
    assert list(results["rows"]) == compare.PAPER_ROWS and results["settings"]["seeds"] == [0, 1, 2]
    assert results["settings"] == {
        "data_root": "/corpus", "max_steps": 120, "crop_samples": 16000, "batch_size": 16, "max_eval_samples": 300,
        "eval_every_steps": 0, "early_stopping_patience": 0, "log_with": "none", "save_total_limit": 1,
        "calibrate": False, "config": "configs/tiny.yaml", "seeds": [0, 1, 2],
    }  # fmt: skip
    base_argv = calls[0][2]
    assert fixed == [(s, {"corpus": "/corpus"}, base_argv) for s in (0, 1, 2)] + [
        (s, {"backbone": "tiny-random"}, base_argv) for s in (0, 1, 2)
    ]
    assert calls[-1][0] == "full_finetune" and calls[-1][3]["learning_rate"] == pytest.approx(1e-4 * 0.25)
    assert (tmp_path / "outputs" / "compare" / "results.json").is_file()
    assert (tmp_path / "outputs" / "compare" / "table.md").read_text() == compare.table(results["rows"]) + "\n"
