"""ASVspoof metrics contracts found by mutation testing: errors name the argument that is wrong, custom costs reach
every metric (also through the breakdowns), actDCF's normaliser, and the exact markdown of the tables."""

import math

import numpy as np
import pytest

from training.metrics import asvspoof_metrics as metrics


BONAFIDE = [2.0, 1.5, 0.3, -0.2]
SPOOF = [-3.0, -1.0, 0.1, 0.5, -2.5]
COSTS = {"p_spoof": 0.5, "c_miss": 1.0, "c_fa": 10.0}  # here c_miss * (1 - p_spoof) is the smaller normaliser


@pytest.mark.parametrize(
    "function", [metrics.compute_det_curve, metrics.compute_eer, metrics.compute_act_dcf, metrics.compute_cllr]
)
def test_a_non_finite_score_is_reported_with_its_argument_and_index(function):
    with pytest.raises(
        ValueError, match=r"^bonafide_scores has 1 non-finite value\(s\); the first is bonafide_scores\[2\]"
    ):
        function([0.0, 1.0, math.nan], SPOOF)
    with pytest.raises(ValueError, match=r"^spoof_scores has 1 non-finite value\(s\); the first is spoof_scores\[0\]"):
        function(BONAFIDE, [math.inf, 0.0])


def test_breakdown_names_the_bad_scores_attacks_and_codecs():
    labels = [1, 0, 0]
    with pytest.raises(ValueError, match=r"^scores has 1 non-finite"):
        metrics.breakdown([0.0, math.nan, 1.0], labels, attacks=["-", "A01", "A02"])
    with pytest.raises(ValueError, match=r"^attacks must have one entry per score \(3\), got 2"):
        metrics.breakdown([0.0, 1.0, 2.0], labels, attacks=["-", "A01"])
    with pytest.raises(ValueError, match=r"^codecs must have one entry per score \(3\), got 4"):
        metrics.breakdown([0.0, 1.0, 2.0], labels, codecs=["C1", "C1", "C2", "C2"])
    with pytest.raises(ValueError, match=r"^codecs uses the reserved name 'pooled'"):
        metrics.breakdown([0.0, 1.0, 2.0], labels, codecs=["pooled", "C1", "C1"])
    with pytest.raises(ValueError, match=r"^attacks uses the reserved name 'pooled'"):
        metrics.breakdown([0.0, 1.0, 2.0], labels, attacks=["-", "pooled", "A01"])


def test_zero_miss_cost_is_refused():
    with pytest.raises(ValueError, match="c_miss and c_fa must be positive"):
        metrics.compute_act_dcf(BONAFIDE, SPOOF, c_miss=0.0)


def test_act_dcf_when_every_bona_fide_is_missed_is_one_whatever_the_normaliser():
    """All bona fide below the Bayes threshold, no spoof accepted: cost = Cmiss (1 - Pspoof), which normalised by
    min(Cfa Pspoof, Cmiss (1 - Pspoof)) is exactly 1 with these costs (the second term is the smaller)."""
    threshold = -math.log(COSTS["c_miss"] * (1 - COSTS["p_spoof"]) / (COSTS["c_fa"] * COSTS["p_spoof"]))
    act_dcf, got_threshold = metrics.compute_act_dcf([-10.0], [-20.0], **COSTS)
    assert got_threshold == pytest.approx(threshold)
    assert act_dcf == pytest.approx(1.0)
    default_cost, _ = metrics.compute_act_dcf([-10.0], [-20.0])
    assert default_cost == pytest.approx(0.95 / 0.5)  # official costs: normaliser Cfa Pspoof = 0.5


# COSTS changes the prior only; the other two sets each change one cost away from its default (a dropped argument
# falls back to the default and changes actDCF).
@pytest.mark.parametrize(
    "costs", [COSTS, {"p_spoof": 0.05, "c_miss": 3.0, "c_fa": 10.0}, {"p_spoof": 0.05, "c_miss": 1.0, "c_fa": 2.0}]
)
def test_custom_costs_reach_every_metric_and_every_breakdown_row(costs):
    scores = np.array(BONAFIDE + SPOOF)
    labels = np.array([1] * len(BONAFIDE) + [0] * len(SPOOF))
    direct = metrics.compute_metrics(scores, labels, **costs)
    assert direct["act_dcf"] == pytest.approx(metrics.compute_act_dcf(BONAFIDE, SPOOF, **costs)[0])
    assert direct["act_dcf"] != pytest.approx(metrics.compute_metrics(scores, labels)["act_dcf"])
    assert direct["min_dcf"] == pytest.approx(metrics.compute_min_dcf(BONAFIDE, SPOOF, **costs)[0])
    attacks = ["-"] * len(BONAFIDE) + ["A01"] * len(SPOOF)
    codecs = ["C1"] * (len(BONAFIDE) + len(SPOOF))
    for rows in (
        metrics.breakdown_by_attack(scores, labels, attacks, **costs),
        metrics.breakdown_by_codec(scores, labels, codecs, **costs),
    ):
        for row in rows:
            assert {k: row[k] for k in metrics.METRIC_NAMES} == pytest.approx(direct)


def test_min_dcf_default_cost_uses_the_bona_fide_prior():
    """A system that rejects everything costs Cmiss (1 - Pspoof); minDCF is normalised by the cheaper of 'accept
    all' and 'reject all', so a useless system scores exactly 1."""
    useless_bonafide, useless_spoof = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    min_dcf, _ = metrics.compute_min_dcf(useless_bonafide, useless_spoof, **COSTS)
    assert min_dcf == pytest.approx(1.0)


def test_cllr_of_huge_llrs_uses_the_linear_softplus_tail():
    """Cllr of LLRs far beyond exp()'s range stays finite: a confidently wrong trial costs its LLR / ln 2 bits."""
    cllr = metrics.compute_cllr([-709.0], [709.0])  # both wrong by 709 nats
    assert cllr == pytest.approx(709.0 / math.log(2), rel=1e-9)
    assert metrics.compute_cllr([-800.0], [800.0]) == pytest.approx(800.0 / math.log(2), rel=1e-9)


def test_labels_that_are_not_numbers_are_refused():
    with pytest.raises(ValueError):
        metrics.split_by_label([0.0, 1.0], ["bonafide", "spoof"])


def test_table_and_grid_markdown_exactly():
    scores = [2.0, 1.0, -1.0, 0.5, -2.0, 3.0]
    labels = [1, 1, 0, 0, 0, 1]
    attacks = ["-", "-", "A01", "A02", "A01", "-"]
    codecs = ["C1", "C2", "C1", "C2", "C2", "C1"]
    rows = metrics.breakdown(scores, labels, attacks=attacks, codecs=codecs)
    table = metrics.format_table(rows).splitlines()
    assert table[0] == "| attack | codec | n_bonafide | n_spoof | EER (%) | minDCF | actDCF | Cllr (bits) |"
    assert table[1] == "|---|---|---|---|---|---|---|---|"
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| pooled | pooled | 3 | 3 | ") and table[2].endswith(" |")
    assert "| A02 | C1 | 2 | 0 | - | - | - | - |" in table
    grid = metrics.format_grid(rows, "eer").splitlines()
    assert grid[:2] == ["| EER (%) | pooled | C1 | C2 |", "|---|---|---|---|"]
    eer = {(r["attack"], r["codec"]): r["eer"] for r in rows}
    assert (
        grid[2] == "| pooled | " + " | ".join(f"{100 * eer[('pooled', c)]:.3f}" for c in ("pooled", "C1", "C2")) + " |"
    )
    assert grid[4] == "| A02 | " + f"{100 * eer[('A02', 'pooled')]:.3f} | - | {100 * eer[('A02', 'C2')]:.3f} |"
    assert metrics.format_grid(rows, "act_dcf").splitlines()[0].startswith("| actDCF |")
    by_codec = metrics.breakdown(scores, labels, codecs=codecs)
    assert metrics.format_table(by_codec).splitlines()[0].startswith("| codec | n_bonafide |")
    one_row = metrics.breakdown(scores, labels, attacks=attacks, codecs=codecs)[:1]  # a table of one row is fine
    assert metrics.format_table(one_row).splitlines()[2] == table[2]
    assert metrics.format_grid(one_row).splitlines()[2] == f"| pooled | {100 * eer[('pooled', 'pooled')]:.3f} |"
    assert metrics.format_table(by_codec[:1]).splitlines()[0].startswith("| codec | n_bonafide |")
    with pytest.raises(ValueError, match=r"^format_table got no rows$"):
        metrics.format_table([])
    with pytest.raises(ValueError, match=r"^format_grid needs rows from breakdown\(\) with both attacks and codecs$"):
        metrics.format_grid(by_codec)
    with pytest.raises(ValueError, match=r"^format_grid needs rows from breakdown\(\) with both attacks and codecs$"):
        metrics.format_grid(metrics.breakdown(scores, labels, attacks=attacks))
    with pytest.raises(ValueError, match=r"^metric must be one of"):
        metrics.format_grid(rows, "auc")
