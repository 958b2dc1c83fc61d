"""Expert analysis: usage tables, heatmap, routing signatures, novel-attack score."""

import json

import numpy as np
import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config
from train_fixtures import write_synthetic_asvspoof5

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from training.analysis.analyze_experts import (
    SIGNATURES_FILE,
    analyze,
    novelty_scores,
    roc_auc,
    router_balance,
    specialisation,
    usage_by_group,
)


def test_novelty_is_zero_on_a_centroid_and_one_for_disjoint_routing():
    # 2 routers x 4 experts, top-2: known class uses experts {0, 1} everywhere.
    known = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    disjoint = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    half = np.array([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=float)
    clips = [known[None], disjoint[None], half[None], np.stack([known, disjoint])]  # the last: two windows
    scores = novelty_scores(clips, {"A01": known.reshape(-1)}, top_k=2)
    np.testing.assert_allclose(scores, [0.0, 1.0, 0.25, 0.5])


def test_roc_auc_matches_pairwise_counting_with_ties():
    positive, negative = np.array([0.9, 0.5, 0.5]), np.array([0.5, 0.1])
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    assert roc_auc(positive, negative) == pytest.approx(np.mean(pairs))


def test_router_balance_turns_collapse_into_a_number():
    """Collapsed routing (every clip picks experts 0 and 1 of 4, k = 2) has load [.5, .5, 0, 0] and entropy ln 2;
    routing spread over all four experts reaches ln 4."""
    collapsed = np.tile(np.array([[1.0, 1.0, 0.0, 0.0]]), (6, 1, 1))  # (clips, routers, experts)
    spread = np.array([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]] * 3)
    skewed = np.array([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0, 1.0]]] * 2)
    balance = router_balance(np.concatenate([collapsed, spread, skewed], axis=1), ["a", "b", "c"], 2)
    assert balance["a"]["load"] == [0.5, 0.5, 0.0, 0.0]
    assert balance["a"]["entropy_nats"] == pytest.approx(np.log(2), abs=1e-4)
    assert balance["a"]["effective_experts"] == pytest.approx(2.0, abs=1e-3)
    assert balance["b"]["entropy_nats"] == pytest.approx(np.log(4), abs=1e-4) == balance["b"]["max_entropy_nats"]
    expected = [0.5, 1 / 6, 1 / 6, 1 / 6]  # expert 0 in every decision, the others in one of three each
    assert balance["c"]["load"] == pytest.approx(expected, abs=1e-4)
    assert balance["c"]["entropy_nats"] == pytest.approx(-sum(p * np.log(p) for p in expected), abs=1e-4)


def test_usage_tables_and_specialisation():
    usage = np.array([[[1, 0, 1]], [[1, 0, 1]], [[0, 1, 1]]], dtype=float)  # (3 clips, 1 router, 3 experts)
    table = usage_by_group(usage, ["A01", "A01", "A02"])
    np.testing.assert_allclose(table["A01"], [[1, 0, 1]])
    assert specialisation(table) == {"expert_0": ["A01"], "expert_1": ["A02"], "expert_2": []}


def test_specialisation_leaves_bona_fide_out_and_counts_a_usage_of_exactly_the_ratio():
    # expert 0: A01 uses it 1.5 x the attacks' mean (1.0 vs 2/3), exactly the ratio; bona fide's heavy use of
    # expert 2 neither counts as an attack nor raises the attacks' mean.
    table = {
        "A01": np.array([[1.0, 0.0, 1.0]]),  # expert 1: A02 and A03 at exactly 1.5 x 2/3
        "A02": np.array([[0.5, 1.0, 0.5]]),
        "A03": np.array([[0.5, 1.0, 0.5]]),
        "bonafide": np.array([[0.0, 0.0, 2.0]]),
    }
    assert specialisation(table) == {"expert_0": ["A01"], "expert_1": ["A02", "A03"], "expert_2": ["A01"]}
    assert specialisation({"bonafide": np.ones((1, 3))}) == {}


def saved_model(tmp_path):
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=1.0)
    model.save_pretrained(tmp_path / "model")
    return model


def test_empty_reference_split_and_unknown_known_attacks_are_clear_errors(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=2)
    saved_model(tmp_path)
    message = (
        rf"^--known_attacks \['A99'\]: no such attack in the 'eval' or 'train' split of {corpus} "
        r"\(attacks there: \['A01', 'A02', 'A04', 'bonafide'\]\)$"
    )
    with pytest.raises(ValueError, match=message):
        analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "a"), known_attacks=["A99"])
    protocol = next(corpus.rglob("ASVspoof5.train.tsv"))
    protocol.write_text("")  # an empty reference split
    with pytest.raises(ValueError, match=r"ASVspoof5\.train\.tsv: the protocol lists no utterances"):
        analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "a"))


def test_a_split_of_one_clip_is_enough_and_known_attacks_may_come_from_either_split():
    from datasets import Dataset

    from training.analysis.analyze_experts import check_splits

    corpus = {"train": Dataset.from_dict({"attack": ["A02"]}), "eval": Dataset.from_dict({"attack": ["A04"]})}
    check_splits(corpus, "root", "eval", "train", ["A02", "A04"])  # A02 only in train, A04 only in eval
    with pytest.raises(ValueError, match=r"^root: the 'eval' split is empty: there is no routing to analyse$"):
        check_splits({**corpus, "eval": Dataset.from_dict({"attack": []})}, "root", "eval", "train", None)


@pytest.mark.slow
def test_the_signatures_give_the_demo_the_novelty_the_analysis_computed(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=3)
    model = saved_model(tmp_path)
    analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "analysis"), batch_size=4)
    rows = (tmp_path / "analysis" / "routing_signatures_eval.tsv").read_text().splitlines()[1:]
    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path / "model").eval()
    utt_id, novelty = rows[0].split("\t")[0], float(rows[0].split("\t")[3])
    audio = next(corpus.rglob(f"{utt_id}.flac"))
    assert reloaded.score_file(audio).novelty.distance == pytest.approx(novelty, abs=1e-4)
    del model


@pytest.mark.slow
def test_analysis_end_to_end_on_a_small_corpus(tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=1.0)
    model.save_pretrained(tmp_path / "model")
    results = analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "analysis"), batch_size=4)
    assert set(results["usage_by_attack"]) == {"A01", "A04", "bonafide"}
    for table in results["usage_by_attack"].values():
        assert np.allclose(np.asarray(table).sum(axis=-1), 2.0)  # each router picks exactly top-2
    for name in ("router_balance", "router_balance_reference"):
        assert list(results[name]) == model.router_names
        assert all(sum(router["load"]) == pytest.approx(1.0, abs=1e-3) for router in results[name].values())
    assert results["novelty"]["separation"]["num_unseen"] == 2  # the A04 spoofs: never seen in training
    assert 0.0 <= results["novelty"]["separation"]["roc_auc_unseen_vs_known"] <= 1.0
    assert (tmp_path / "analysis" / "expert_usage_eval.png").stat().st_size > 1000
    signatures = json.loads((tmp_path / "model" / SIGNATURES_FILE).read_text())
    assert set(signatures["known"]) == {"A01", "A02", "bonafide"}
    assert len(signatures["known"]["A01"]) == 2 * 4 and 0.0 <= signatures["threshold"] <= 1.0
    rows = (tmp_path / "analysis" / "routing_signatures_eval.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["utt_id", "attack", "codec", "novelty", "signature"] and len(rows) == 1 + 8


# Hand-made routing per attack (2 routers x 4 experts, top-2): what the fake scorer below reports for each clip.
ROUTING = {
    "bonafide": [[1.0, 1.0, 0.0, 0.0], [1.0, 0.5, 0.5, 0.0]],  # alternating clips: novelty 0.125 (binary-exact)
    "A01": [[0.0, 0.0, 1.0, 1.0]],
    "A02": [[0.0, 1.0, 1.0, 0.0]],
    # the unseen eval attack: far from every training centroid, or exactly at the threshold (not flagged)
    "A04": [[1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 0.0]],
}


def fake_score_dataset(model, dataset, batch_size, with_usage):
    """`score_dataset` with the routing of ROUTING instead of a model's: fast, and the expected numbers are known."""
    from training.metrics.scoring import SplitScores

    rows = sorted(zip(dataset["utt_id"], dataset["attack"], dataset["label"], strict=True))
    seen = {attack: 0 for attack in ROUTING}
    usage = []
    for _, attack, _ in rows:
        usage.append([ROUTING[attack][seen[attack] % len(ROUTING[attack])]] * 2)  # the same in both routers
        seen[attack] += 1
    usage, labels = np.array(usage), np.array([label for _, _, label in rows])  # (N, 2, 4), (N,)
    return SplitScores([u for u, _, _ in rows], np.zeros(len(rows)), labels, usage, [clip[None] for clip in usage])


def test_analysis_threshold_comes_from_the_reference_and_the_auc_says_unseen_is_more_novel(tmp_path, monkeypatch):
    """Reference = train (bona fide, A01, A02); analysed = eval (bona fide, A01 known, A04 unseen). One A04 clip is
    the most novel of all (0.5), the other ties the bona fide clips at the threshold (0.125): ROC AUC 10/12 (2/12 if
    inverted), and only the first is flagged. The threshold is the reference's 95th percentile, not the analysed
    split's (0.369)."""
    import training.analysis.analyze_experts as analysis

    monkeypatch.setattr(analysis, "score_dataset", fake_score_dataset)
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    saved_model(tmp_path)
    results = analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "out"))
    novelty = results["novelty"]
    assert novelty["threshold"] == 0.125 and novelty["mean_by_attack"]["A04"] == 0.3125
    separation = novelty["separation"]
    assert separation["roc_auc_unseen_vs_known"] == pytest.approx(10 / 12)
    assert (separation["num_unseen"], separation["num_known_or_bonafide"]) == (2, 6)  # A04 | bona fide + A01
    assert (separation["flagged_unseen"], separation["flagged_known_or_bonafide"]) == (0.5, 0.0)
    signatures = json.loads((tmp_path / "model" / SIGNATURES_FILE).read_text())
    assert signatures["threshold"] == novelty["threshold"] and set(signatures["known"]) == {"bonafide", "A01", "A02"}


def test_bona_fide_clips_are_never_unseen_even_when_the_reference_has_none(tmp_path, monkeypatch):
    import training.analysis.analyze_experts as analysis

    monkeypatch.setattr(analysis, "score_dataset", fake_score_dataset)
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    protocol = corpus / "ASVspoof5.train.tsv"
    protocol.write_text("".join(line + "\n" for line in protocol.read_text().splitlines() if "bonafide" not in line))
    saved_model(tmp_path)
    results = analyze(str(tmp_path / "model"), str(corpus), "eval", "train", str(tmp_path / "out"))
    assert results["novelty"]["separation"]["num_unseen"] == 2  # the A04 spoofs, not the 4 bona fide clips


def fake_analysis(tmp_path, monkeypatch, **kwargs):
    """`analyze` on the synthetic corpus with the routing of ROUTING; returns (results, output folder, batch sizes)."""
    import training.analysis.analyze_experts as analysis

    batch_sizes = []

    def recording(model, dataset, batch_size, with_usage):
        assert with_usage is True and isinstance(model, MoLExForAudioClassification)
        batch_sizes.append(batch_size)
        return fake_score_dataset(model, dataset, batch_size, with_usage)

    monkeypatch.setattr(analysis, "score_dataset", recording)
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    if not (tmp_path / "model").exists():
        saved_model(tmp_path)
    results = analyze(str(tmp_path / "model"), str(corpus), "eval", "train", **kwargs)
    return results, batch_sizes


def test_the_analysis_writes_its_tables_signatures_and_figures(tmp_path, monkeypatch):
    """Eval: 4 bona fide, 2 A01, 2 A04 clips; train (the reference): 4 bona fide, 2 A01, 2 A02 (ROUTING above)."""
    results, batch_sizes = fake_analysis(tmp_path, monkeypatch, output_dir=str(tmp_path / "out"))
    assert batch_sizes == [16, 16]  # the reference split and the analysed one, at the default batch size
    assert (results["model"], results["split"], results["reference_split"]) == (
        str(tmp_path / "model"),
        "eval",
        "train",
    )
    bonafide = [[1.0, 0.75, 0.25, 0.0]] * 2  # the mean of its two alternating routings, in both routers
    assert results["usage_by_attack"] == {
        "A01": [[0, 0, 1, 1]] * 2,
        "A04": [[1, 0.25, 0.25, 0.5]] * 2,
        "bonafide": bonafide,
    }
    assert results["usage_by_attack_reference"] == {
        "A01": [[0, 0, 1, 1]] * 2,
        "A02": [[0, 1, 1, 0]] * 2,
        "bonafide": bonafide,
    }
    every_clip = [[0.75, 0.4375, 0.4375, 0.375]] * 2  # all 8 eval clips: one codec
    assert list(results["usage_by_codec"].values()) == [every_clip]
    assert results["expert_specialisation"] == {
        "expert_0": [],
        "expert_1": ["A02"],
        "expert_2": [],
        "expert_3": ["A01"],
    }
    router_names = MoLExForAudioClassification.from_pretrained(tmp_path / "model").router_names
    assert results["router_names"] == router_names == list(results["router_balance"])
    assert results["router_balance"][router_names[0]]["load"] == [0.375, 0.2188, 0.2188, 0.1875]
    assert results["router_balance_reference"][router_names[0]]["load"] == [0.25, 0.3125, 0.3125, 0.125]
    assert results["novelty"]["mean_by_attack"] == {"A01": 0.0, "A04": 0.3125, "bonafide": 0.125}
    assert results["figures"] == {
        "expert_usage": "expert_usage_eval.png",
        "expert_usage_reference": "expert_usage_train.png",
    }
    out = tmp_path / "out"
    assert json.loads((out / "expert_analysis.json").read_text()) == results
    for figure in results["figures"].values():
        assert (out / figure).read_bytes().startswith(b"\x89PNG")

    rows = [row.split("\t") for row in (out / "routing_signatures_eval.tsv").read_text().splitlines()]
    assert rows[0] == ["utt_id", "attack", "codec", "novelty", "signature"] and len(rows) == 9
    assert [row[0] for row in rows[1:]] == [f"E_{i:010d}" for i in range(8)]
    assert [row[1] for row in rows[1:5]] == ["bonafide", "A01", "bonafide", "A04"]
    assert rows[1][3:] == ["0.1250", "1 1 0 0 1 1 0 0"] and rows[3][3:] == ["0.1250", "1 0.5 0.5 0 1 0.5 0.5 0"]
    assert rows[4][3:] == ["0.5000", "1 0 0 1 1 0 0 1"] and rows[2][3] == "0.0000"

    signatures = json.loads((tmp_path / "model" / SIGNATURES_FILE).read_text())
    assert signatures == {
        "distance": "L1 distance to the nearest known centroid / (2 * top_k * routers)",
        "top_k": 2,
        "router_names": router_names,
        "threshold": 0.125,
        "known": {"A01": [0, 0, 1, 1] * 2, "A02": [0, 1, 1, 0] * 2, "bonafide": [1, 0.75, 0.25, 0] * 2},
    }


def test_the_output_folder_defaults_to_analysis_beside_the_model_and_options_reach_the_scoring(tmp_path, monkeypatch):
    from training.data.loaders import load_asvspoof5
    from training.trainer.run_setup import subsample

    results, batch_sizes = fake_analysis(tmp_path, monkeypatch, output_dir=None, batch_size=3, max_samples=5)
    assert batch_sizes == [3, 3]
    rows = (tmp_path / "analysis" / "routing_signatures_eval.tsv").read_text().splitlines()
    drawn = subsample(load_asvspoof5(tmp_path / "corpus", splits=["eval"])["eval"], 5, seed=0)["utt_id"]
    assert [row.split("\t")[0] for row in rows[1:]] == sorted(drawn)  # 5 of the 8 eval clips, drawn with seed 0
    assert (tmp_path / "analysis" / "expert_analysis.json").exists()
    assert (
        results["novelty"]["separation"]["num_unseen"] + results["novelty"]["separation"]["num_known_or_bonafide"] == 5
    )
    nested = tmp_path / "runs" / "a" / "b"
    for _ in range(2):  # a folder that does not exist yet, then again into the same folder
        fake_analysis(tmp_path, monkeypatch, output_dir=str(nested))
        assert (nested / "expert_analysis.json").exists()


def test_attacks_named_known_are_not_counted_as_unseen(tmp_path, monkeypatch):
    results, _ = fake_analysis(tmp_path, monkeypatch, output_dir=str(tmp_path / "out"), known_attacks=["A02", "A04"])
    assert results["novelty"]["separation"] is None  # nothing unseen is left to separate


def test_the_asvspoof2019_dataset_name_picks_its_loader(tmp_path, monkeypatch):
    import training.analysis.analyze_experts as analysis

    def refuse(root, splits):
        raise RuntimeError(f"2019 loader: {root} {splits}")

    monkeypatch.setattr(analysis, "load_asvspoof2019_la", refuse)
    saved_model(tmp_path)
    with pytest.raises(RuntimeError, match=r"2019 loader: .*corpus \['train', 'eval'\]"):
        analyze(str(tmp_path / "model"), str(tmp_path / "corpus"), "eval", "train", None, "asvspoof2019_la")


def test_the_command_line_passes_its_options_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    import training.analysis.analyze_experts as analysis

    calls = []
    summary = {"expert_specialisation": {"expert_0": []}, "router_balance": {"r": 1}, "novelty": {"threshold": 0.1}}

    def fake_analyze(*args):
        calls.append(args)
        return {**summary, "usage_by_attack": {"A01": []}}

    monkeypatch.setattr(analysis, "analyze", fake_analyze)
    analysis.main(["M", "D"])
    assert calls[-1] == ("M", "D", "eval", "train", None, "asvspoof5", None, None)
    assert json.loads(capsys.readouterr().out) == summary
    argv = ["M", "D", "--split", "dev", "--reference_split", "eval", "--dataset", "asvspoof2019_la"]
    argv += ["--known_attacks", "A07", "A08", "--output_dir", "O", "--max_samples", "12"]
    analysis.main(argv)
    assert calls[-1] == ("M", "D", "dev", "eval", "O", "asvspoof2019_la", ["A07", "A08"], 12)
    analysis.main(["M", "D", "--dataset", "asvspoof5"])
    assert calls[-1][5] == "asvspoof5"
    with pytest.raises(SystemExit):
        analysis.main(["M", "D", "--dataset", "asvspoof2021"])


def test_the_heatmap_shows_each_routers_usage_per_group(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from PIL import Image

    import training.analysis.analyze_experts as analysis

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rng = np.random.default_rng(0)
    table = {name: rng.uniform(0, 0.9, (5, 3)) for name in ("A01", "A02", "bonafide")}  # 5 routers x 3 experts
    names = [f"layer_{i}" for i in range(5)]
    analysis.save_heatmap(tmp_path / "map.png", table, names, "Expert usage per attack (eval)")
    (figure,) = figures
    panels = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    assert len(panels) == 8  # 2 rows of 4 columns: 5 panels shown, 3 hidden
    shown = [axis for axis in panels if axis.axison]
    assert [axis.get_title() for axis in shown] == names and len(shown) == 5
    vmax = max(v.max() for v in table.values())
    for index, axis in enumerate(shown):
        (image,) = axis.get_images()
        np.testing.assert_allclose(image.get_array(), np.stack([table[g][index] for g in table]))
        assert image.get_clim() == (0, vmax) and image.get_cmap().name == "viridis" and axis.get_aspect() == "auto"
        assert [label.get_text() for label in axis.get_xticklabels()] == ["0", "1", "2"]
        expected_rows = list(table) if index % 4 == 0 else ["", "", ""]
        assert [label.get_text() for label in axis.get_yticklabels()] == expected_rows
        assert axis.get_xlabel() == "expert"
    colorbar = [axis for axis in figure.axes if axis not in panels]
    assert colorbar[0].get_ylabel() == "share of selections"
    assert figure.get_suptitle() == "Expert usage per attack (eval)"
    with Image.open(tmp_path / "map.png") as png:
        assert png.info["dpi"] == pytest.approx((120, 120), abs=0.1)
    plt.close(figure)


def test_the_written_signatures_give_the_model_the_novelty_the_analysis_reported(tmp_path, monkeypatch):
    """The fast counterpart of the end-to-end test above: the file the analysis writes fits the model it sits beside
    and, read back as `score_waveform` reads it, gives each clip the novelty the analysis put in its TSV."""
    from modeling_molex.novelty import check_signatures, clip_novelty, load_routing_signatures

    fake_analysis(tmp_path, monkeypatch, output_dir=str(tmp_path / "out"))
    model = MoLExForAudioClassification.from_pretrained(tmp_path / "model")
    adapter = model.config.adapter
    signatures = check_signatures(
        load_routing_signatures(tmp_path / "model" / SIGNATURES_FILE),
        model.router_names,
        adapter.num_experts,
        adapter.top_k,
        "routing_signatures.json",
        adapter.expert_packs,
    )
    rows = [row.split("\t") for row in (tmp_path / "out" / "routing_signatures_eval.tsv").read_text().splitlines()[1:]]
    for _, _, _, novelty, signature in rows:
        usage = np.array([float(value) for value in signature.split()]).reshape(1, 2, 4)
        result = clip_novelty(usage, signatures, adapter.top_k)
        assert f"{result.distance:.4f}" == novelty and result.novel == (result.distance > 0.125)
