"""Tests for training/metrics/asvspoof_metrics.py, score_files.py and det_plot.py.

Expected values come from hand calculations and from a brute-force reference written here in plain Python straight
from the official ASVspoof 5 definitions (evaluation-package/calculate_modules.py): one DET point per trial, ties
ordered bona fide first, EER = mean(frr, far) at the first point minimising |frr - far|, and so on.
"""

import math
from pathlib import Path

import numpy as np
import pytest

from training.metrics import asvspoof_metrics as metrics
from training.metrics import det_plot, score_files


REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- brute-force reference from the official definition
def reference_det(bonafide, spoof):
    """[(frr, far, threshold)] for 'reject the k lowest trials', k = 0..N; class 0 (bona fide) sorts first on ties."""
    trials = sorted([(float(s), 0) for s in bonafide] + [(float(s), 1) for s in spoof])
    n_bonafide, n_spoof = len(bonafide), len(spoof)
    points = [(0.0, 1.0, trials[0][0] - 0.001)]
    bonafide_rejected = spoof_rejected = 0
    for score, is_spoof in trials:
        spoof_rejected += is_spoof
        bonafide_rejected += 1 - is_spoof
        points.append((bonafide_rejected / n_bonafide, (n_spoof - spoof_rejected) / n_spoof, score))
    return points


def reference_eer(bonafide, spoof):
    best = None
    for frr, far, threshold in reference_det(bonafide, spoof):
        if best is None or abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2, threshold)
    return best[1], best[2]


def reference_min_dcf(bonafide, spoof, p_spoof=0.05, c_miss=1, c_fa=10):
    p_bonafide = 1 - p_spoof
    best = (math.inf, None)
    for frr, far, threshold in reference_det(bonafide, spoof):
        cost = c_miss * frr * p_bonafide + c_fa * far * (1 - p_bonafide)
        if cost < best[0]:
            best = (cost, threshold)
    return best[0] / min(c_miss * p_bonafide, c_fa * (1 - p_bonafide)), best[1]


def reference_act_dcf(bonafide, spoof, p_spoof=0.05, c_miss=1, c_fa=10):
    threshold = -math.log(c_miss * (1 - p_spoof) / (c_fa * p_spoof))
    miss = sum(s < threshold for s in bonafide) / len(bonafide)
    false_accept = sum(s >= threshold for s in spoof) / len(spoof)
    normaliser = min(c_fa * p_spoof, c_miss * (1 - p_spoof))
    return (c_miss * (1 - p_spoof) * miss + c_fa * p_spoof * false_accept) / normaliser


def reference_cllr(bonafide, spoof):
    def softplus(x):  # log(1 + e^x), without overflow
        return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))

    bonafide_cost = math.fsum(softplus(-s) for s in bonafide) / len(bonafide)
    spoof_cost = math.fsum(softplus(s) for s in spoof) / len(spoof)
    return 0.5 * (bonafide_cost + spoof_cost) / math.log(2)


def as_trials(bonafide, spoof):
    return np.r_[bonafide, spoof], np.r_[np.ones(len(bonafide), int), np.zeros(len(spoof), int)]


# ------------------------------------------------------------------------------------------------- hand-computed cases
@pytest.mark.parametrize(
    ("bonafide", "spoof", "eer", "eer_threshold", "min_dcf"),
    [
        ([1.0], [0.0], 0.0, 0.0, 0.0),  # 1 + 1, separated: reject the spoof only
        ([0.0], [1.0], 1.0, 0.0, 1.0),  # 1 + 1, reversed: best is to accept everything (minDCF 1)
        ([0.3], [0.3], 1.0, 0.3, 1.0),  # a tie counts against the system: the bona fide is rejected first
        ([0.3] * 3, [0.3] * 4, 1.0, 0.3, 1.0),  # all equal scores: EER 100 %, not 50 %
        ([2.0, 3.0], [0.0, 1.0], 0.0, 1.0, 0.0),  # perfectly separated
        ([1.0], [0.0, 2.0], 0.25, 0.0, 0.5),  # |frr - far| = 0.5 at points 1 and 2: the first one wins
        ([1.0, 3.0, 5.0], [0.0, 2.0, 4.0], 1 / 3, 2.0, 2 / 3),  # s b s b s b: frr = far = 1/3 after 3 rejections
        # Points 2 and 3 are mathematically equally close (|1/3 - 1/2| = |2/3 - 1/2|), but in float64 2/3 - 0.5 is
        # the smaller, so the official argmin takes point 3: EER 7/12 (exact arithmetic would give 5/12).
        ([0.1, 0.5, 0.5], [0.5, -1.0], 7 / 12, 0.5, 0.5),
    ],
)
def test_eer_and_min_dcf_hand_computed(bonafide, spoof, eer, eer_threshold, min_dcf):
    got_eer, got_threshold = metrics.compute_eer(bonafide, spoof)
    assert got_eer == pytest.approx(eer, abs=1e-15)
    assert got_threshold == eer_threshold
    assert metrics.compute_min_dcf(bonafide, spoof)[0] == pytest.approx(min_dcf, abs=1e-15)


TAU = -math.log(1.9)  # Bayes threshold for Pspoof 0.05, Cmiss 1, Cfa 10


@pytest.mark.parametrize(
    ("bonafide", "spoof", "act_dcf"),
    [
        ([5.0], [-5.0], 0.0),
        ([0.0, -1.0], [-2.0, 0.0], (0.95 * 0.5 + 0.5 * 0.5) / 0.5),  # one miss of two, one false accept of two
        ([TAU], [TAU], 1.0),  # at the threshold: bona fide accepted (< is a miss), spoof accepted (>= is an FA)
        ([-5.0], [5.0], 2.9),  # every decision wrong: actDCF exceeds 1
    ],
)
def test_act_dcf_hand_computed(bonafide, spoof, act_dcf):
    value, threshold = metrics.compute_act_dcf(bonafide, spoof)
    assert value == pytest.approx(act_dcf, abs=1e-15)
    assert threshold == pytest.approx(-0.6418538861723947, abs=1e-15)


@pytest.mark.parametrize(
    ("bonafide", "spoof", "cllr"),
    [
        ([0.0, 0.0], [0.0], 1.0),  # LLR 0 carries no information: 1 bit
        ([math.log(3)], [-math.log(3)], math.log2(4 / 3)),
        ([1000.0], [-1000.0], 0.0),
        ([-1000.0], [0.0], 0.5 * (1000 + math.log(2)) / math.log(2)),  # the official log1p(exp(1000)) gives inf
    ],
)
def test_cllr_hand_computed(bonafide, spoof, cllr):
    assert metrics.compute_cllr(bonafide, spoof) == pytest.approx(cllr, rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------ randomized checks against the reference
def random_score_set(rng, case):
    n_bonafide, n_spoof = rng.integers(1, 40, size=2)
    if case % 3 == 0:  # heavy ties: a handful of distinct values shared by both classes
        values = rng.normal(size=4)
        return rng.choice(values, n_bonafide), rng.choice(values, n_spoof)
    if case % 3 == 1:  # quantised, overlapping, with values on the actDCF threshold
        grid = np.r_[np.arange(-3, 4) / 2, TAU]
        return rng.choice(grid, n_bonafide), rng.choice(grid[:-2], n_spoof)
    return rng.normal(1, 1.5, n_bonafide), rng.normal(-1, 1.5, n_spoof)


@pytest.mark.parametrize("case", range(50))
def test_random_sets_match_reference(case):
    rng = np.random.default_rng(1000 + case)
    bonafide, spoof = random_score_set(rng, case)

    frr, far, thresholds = metrics.compute_det_curve(bonafide, spoof)
    assert list(zip(frr.tolist(), far.tolist(), thresholds.tolist(), strict=True)) == reference_det(bonafide, spoof)
    assert metrics.compute_eer(bonafide, spoof) == reference_eer(bonafide, spoof)
    assert metrics.compute_min_dcf(bonafide, spoof) == reference_min_dcf(bonafide, spoof)
    assert metrics.compute_min_dcf(bonafide, spoof, p_spoof=0.5, c_miss=2, c_fa=1) == reference_min_dcf(
        bonafide, spoof, 0.5, 2, 1
    )
    assert metrics.compute_act_dcf(bonafide, spoof)[0] == reference_act_dcf(bonafide, spoof)
    assert metrics.compute_cllr(bonafide, spoof) == pytest.approx(reference_cllr(bonafide, spoof), rel=1e-12)

    scores, labels = as_trials(bonafide, spoof)
    order = rng.permutation(scores.size)
    shuffled = metrics.compute_metrics(scores[order], labels[order])  # trial order must not matter
    assert shuffled == {
        "eer": reference_eer(bonafide, spoof)[0],
        "min_dcf": reference_min_dcf(bonafide, spoof)[0],
        "act_dcf": reference_act_dcf(bonafide, spoof),
        "cllr": pytest.approx(reference_cllr(bonafide, spoof), rel=1e-12),  # a float sum: order moves the last bit
    }


def test_min_dcf_is_bounded_by_accept_all_and_eer_by_one():
    rng = np.random.default_rng(7)
    for _ in range(20):
        bonafide, spoof = rng.normal(-1, 1, 30), rng.normal(1, 1, 30)  # a bad system
        assert metrics.compute_min_dcf(bonafide, spoof)[0] <= 1.0
        assert 0.0 <= metrics.compute_eer(bonafide, spoof)[0] <= 1.0


# ---------------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1], "differ in length"),
        ([0.1, 0.2], [1, 2], r"labels\[1\] = 2"),
        ([0.1, 0.2], ["bonafide", "spoof"], "dtype"),
        ([0.1, 0.2], [1, 1], "no spoof"),
        ([0.1, 0.2], [0, 0], "no bona fide"),
        ([0.1, float("nan")], [1, 0], r"scores\[1\] = nan"),
        ([float("-inf"), 0.2], [1, 0], r"scores\[0\] = -inf"),
        ([], [], "scores is empty"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
        (["a", "b"], [1, 0], "must be numbers"),
    ],
)
def test_compute_metrics_rejects_bad_input(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.compute_metrics(scores, labels)


@pytest.mark.parametrize("kwargs", [{"p_spoof": 0.0}, {"p_spoof": 1.0}, {"c_fa": 0.0}, {"c_miss": -1.0}])
def test_bad_cost_model_is_rejected(kwargs):
    with pytest.raises(ValueError, match="p_spoof|c_miss"):
        metrics.compute_metrics([0.0, 1.0], [0, 1], **kwargs)


def test_per_class_functions_name_the_empty_class():
    with pytest.raises(ValueError, match="spoof_scores is empty"):
        metrics.compute_eer([0.1], [])


# ----------------------------------------------------------------------------------------------------------- breakdowns
@pytest.fixture
def conditions():
    rng = np.random.default_rng(3)
    n = 60
    labels = np.r_[np.ones(20, int), np.zeros(40, int)]
    scores = np.where(labels == 1, rng.normal(1, 1, n), rng.normal(-1, 1, n))
    attacks = ["bonafide"] * 20 + ["A01"] * 20 + ["A02"] * 20
    codecs = (["-", "C01"] * 10) + (["-", "C01"] * 10) + ["-"] * 20  # A02 has no C01 trial
    return scores, labels, np.array(attacks), np.array(codecs)


def test_breakdown_by_attack_scores_each_attack_against_all_bonafide(conditions):
    scores, labels, attacks, _ = conditions
    rows = metrics.breakdown_by_attack(scores, labels, attacks)
    assert [row["attack"] for row in rows] == ["pooled", "A01", "A02"]
    assert rows[0] == {"attack": "pooled", "n_bonafide": 20, "n_spoof": 40, **metrics.compute_metrics(scores, labels)}
    keep = (labels == 1) | (attacks == "A02")
    assert rows[2] == dict(attack="A02", n_bonafide=20, n_spoof=20) | metrics.compute_metrics(
        scores[keep], labels[keep]
    )


def test_breakdown_by_codec_uses_bonafide_and_spoof_of_that_codec(conditions):
    scores, labels, _, codecs = conditions
    rows = metrics.breakdown_by_codec(scores, labels, codecs)
    assert [row["codec"] for row in rows] == ["pooled", "-", "C01"]
    keep = codecs == "C01"
    assert rows[2] == dict(codec="C01", n_bonafide=10, n_spoof=10) | metrics.compute_metrics(
        scores[keep], labels[keep]
    )


def test_breakdown_grid_leaves_empty_cells_empty(conditions):
    scores, labels, attacks, codecs = conditions
    rows = metrics.breakdown(scores, labels, attacks=attacks, codecs=codecs)
    assert len(rows) == 3 * 3
    cell = next(row for row in rows if row["attack"] == "A02" and row["codec"] == "C01")
    empty = {"eer": None, "min_dcf": None, "act_dcf": None, "cllr": None}
    assert cell == {"attack": "A02", "codec": "C01", "n_bonafide": 10, "n_spoof": 0, **empty}
    keep = (codecs == "-") & ((labels == 1) | (attacks == "A01"))
    cell = next(row for row in rows if row["attack"] == "A01" and row["codec"] == "-")
    assert cell["eer"] == metrics.compute_metrics(scores[keep], labels[keep])["eer"]
    grid = metrics.format_grid(rows, "eer").splitlines()
    assert grid[0] == "| EER (%) | pooled | - | C01 |"
    assert grid[-1].startswith("| A02 |") and grid[-1].endswith("| - |")


def test_format_table_renders_every_row(conditions):
    scores, labels, attacks, _ = conditions
    rows = metrics.breakdown_by_attack(scores, labels, attacks)
    lines = metrics.format_table(rows).splitlines()
    assert lines[0] == "| attack | n_bonafide | n_spoof | EER (%) | minDCF | actDCF | Cllr (bits) |"
    assert len(lines) == 2 + len(rows)
    assert lines[2].startswith(f"| pooled | 20 | 40 | {100 * rows[0]['eer']:.3f} | {rows[0]['min_dcf']:.5f} |")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"attacks": ["pooled"] * 60}, "reserved name"), ({"codecs": ["-"] * 59}, "one entry per score")],
)
def test_breakdown_rejects_bad_conditions(conditions, kwargs, message):
    scores, labels, _, _ = conditions
    with pytest.raises(ValueError, match=message):
        metrics.breakdown(scores, labels, **kwargs)


# ---------------------------------------------------------------------------------------------------------- score files
def test_score_and_key_files_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    names = [f"E_{i:010d}" for i in range(30)]
    scores = np.r_[rng.normal(size=27), 1e-300, -0.0, 123456.789012345678]
    labels = rng.integers(0, 2, size=30)
    labels[:2] = [0, 1]
    score_files.write_score_file(tmp_path / "scores.tsv", names, scores)
    score_files.write_key_file(tmp_path / "keys.tsv", names[::-1], labels[::-1])  # order does not matter
    assert (tmp_path / "scores.tsv").read_text().startswith("filename\tcm-score\nE_0000000000\t")
    assert (tmp_path / "keys.tsv").read_text().splitlines()[0] == "filename\tcm-label"
    assert score_files.read_score_file(tmp_path / "scores.tsv") == dict(zip(names, scores.tolist(), strict=True))
    assert score_files.read_key_file(tmp_path / "keys.tsv") == dict(zip(names, labels.tolist(), strict=True))
    got_names, got_scores, got_labels = score_files.load_scores_and_labels(
        tmp_path / "scores.tsv", tmp_path / "keys.tsv"
    )
    assert got_names == names and np.array_equal(got_scores, scores) and np.array_equal(got_labels, labels)
    assert score_files.evaluate_score_file(tmp_path / "scores.tsv", tmp_path / "keys.tsv") == metrics.compute_metrics(
        scores, labels
    )


def test_crlf_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_bytes(b"filename\tcm-score\r\nE_1\t0.5\r\n\r\nE_2\t-1\r\n")
    assert score_files.read_score_file(path) == {"E_1": 0.5, "E_2": -1.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name\tscore\nE_1\t0.5\n", ":1: expected the header filename<TAB>cm-score"),
        ("filename\tcm-score\nE_1\t0.5\nE_2\t0.5\textra\n", ":3: expected 2 tab-separated fields"),
        ("filename\tcm-score\nE_1 0.5\n", ":2: expected 2 tab-separated fields"),
        ("filename\tcm-score\nE_1\tzero\n", r":2 \(E_1\): score 'zero' is not a number"),
        ("filename\tcm-score\nE_1\t0.5\nE_2\tnan\n", r":3 \(E_2\): score is 'nan'"),
        ("filename\tcm-score\nE_1\tinf\n", r":2 \(E_1\): score is 'inf'"),
        ("filename\tcm-score\nE_1\t0.5\nE_1\t0.7\n", ":3: filename 'E_1' already appeared on line 2"),
        ("filename\tcm-score\n\tcm-score\n", ":2: empty filename"),
        ("", "file is empty"),
        ("filename\tcm-score\n", "no trials after the header"),
    ],
)
def test_malformed_score_file_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        score_files.read_score_file(path)
    assert str(path) in str(error.value)


def test_key_file_rejects_unknown_label(tmp_path):
    path = tmp_path / "keys.tsv"
    path.write_text("filename\tcm-label\nE_1\tbonafide\nE_2\tfake\n")
    with pytest.raises(ValueError, match=r"keys.tsv:3 \(E_2\): label 'fake'"):
        score_files.read_key_file(path)


def test_mismatched_scores_and_keys_list_the_difference(tmp_path):
    score_files.write_score_file(tmp_path / "s.tsv", ["a", "b", "x1", "x2"], [0.1, 0.2, 0.3, 0.4])
    score_files.write_key_file(tmp_path / "k.tsv", ["a", "b", "y1"], [1, 0, 1])
    with pytest.raises(
        ValueError, match=r"2 only in .*s\.tsv \(e\.g\. \['x1', 'x2'\]\), 1 only in .*k\.tsv \(e\.g\. \['y1'\]\)"
    ):
        score_files.load_scores_and_labels(tmp_path / "s.tsv", tmp_path / "k.tsv")


@pytest.mark.parametrize(
    ("names", "values", "message"),
    [
        (["a", "b"], [0.1, float("nan")], "score of 'b' is nan"),
        (["a", "a"], [0.1, 0.2], "duplicated filename"),
        (["a", "b\tc"], [0.1, 0.2], "contains"),
        (["a"], [0.1, 0.2], "1 filenames but scores of shape"),
    ],
)
def test_write_score_file_rejects_bad_rows(tmp_path, names, values, message):
    with pytest.raises(ValueError, match=message):
        score_files.write_score_file(tmp_path / "s.tsv", names, values)


def test_write_key_file_rejects_bad_label(tmp_path):
    with pytest.raises(ValueError, match="label of 'b' is 2"):
        score_files.write_key_file(tmp_path / "k.tsv", ["a", "b"], [1, 2])


# ------------------------------------------------------------------------------------------------------------ DET plot
def test_det_plot_marks_the_official_eer_point(tmp_path):
    from matplotlib.figure import Figure
    from scipy.special import ndtri

    rng = np.random.default_rng(11)
    scores, labels = as_trials(rng.normal(1, 1, 300), rng.normal(-1, 1, 700))
    ax = Figure().add_subplot()
    eer, far, frr = det_plot.draw_det_curve(ax, scores, labels, label="demo")
    assert eer == metrics.compute_metrics(scores, labels)["eer"] and (far + frr) / 2 == eer
    marker = ax.lines[-1]
    assert marker.get_marker() == "o"
    assert marker.get_xdata()[0] == pytest.approx(ndtri(far)) and marker.get_ydata()[0] == pytest.approx(ndtri(frr))


def test_save_det_plot_writes_a_png(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(12)
    good = as_trials(rng.normal(2, 1, 25_000), rng.normal(-2, 1, 500))  # more points than drawn: thinned
    bad = as_trials(rng.normal(0.3, 1, 200), rng.normal(0, 1, 200))
    eers = det_plot.save_det_plot(tmp_path / "plots" / "det.png", {"good": good, "bad": bad}, title="test")
    assert eers == {"good": metrics.compute_metrics(*good)["eer"], "bad": metrics.compute_metrics(*bad)["eer"]}
    data = (tmp_path / "plots" / "det.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(tmp_path / "plots" / "det.png")
    assert image.shape[0] > 300 and image.shape[1] > 300 and image.std() > 0.01
    with pytest.raises(ValueError, match="PNG"):
        det_plot.save_det_plot(tmp_path / "det.pdf", {"good": good})
