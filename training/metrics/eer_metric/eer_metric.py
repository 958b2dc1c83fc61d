"""ASVspoof 5 Track-1 metrics (EER, minDCF, actDCF, Cllr) as a Hugging Face `evaluate` module.

    import evaluate
    metric = evaluate.load("training/metrics/eer_metric")  # a local folder: works offline (HF_HUB_OFFLINE=1)
    metric.compute(predictions=scores, references=labels)
    # {"eer": ..., "min_dcf": ..., "act_dcf": ..., "cllr": ...}

predictions are scores (higher = more bona fide, ideally natural-log LLRs), references are labels (1 = bona fide,
0 = spoof). This is only a thin wrapper: the numbers come from `training.metrics.asvspoof_metrics.compute_metrics`, which matches the
official ASVspoof 5 evaluation package. evaluate copies this file into its module cache before importing it, so the
MoLEx repository must be importable (run from its root or `pip install -e .`).
"""

import datasets
import evaluate


try:
    # Indented on purpose: evaluate's import scanner would otherwise ask to `pip install training` from PyPI.
    from training.metrics.asvspoof_metrics import C_FA, C_MISS, P_SPOOF, compute_metrics
except ModuleNotFoundError as error:
    if error.name != "training":
        raise
    raise ModuleNotFoundError(
        "eer_metric needs the MoLEx `training` package: run from the MoLEx repository root or `pip install -e .` there"
    ) from error


_CITATION = """\
@inproceedings{wang2024asvspoof5,
  title={{ASVspoof} 5: Crowdsourced speech data, deepfakes, and adversarial attacks at scale},
  author={Wang, Xin and Delgado, H{\\'e}ctor and Tak, Hemlata and Jung, Jee-weon and others},
  booktitle={Proc. ASVspoof 2024 Workshop},
  year={2024}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: scores, one per trial; higher means more bona fide (natural-log LLRs for actDCF and Cllr).
    references: labels, 1 = bona fide, 0 = spoof; at least one of each.
    p_spoof, c_miss, c_fa: the DCF cost model (official Track-1 values 0.05, 1, 10).
Returns:
    eer (fraction, not percent), min_dcf, act_dcf and cllr (bits).
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class EerMetric(evaluate.Metric):
    """ASVspoof 5 Track-1 countermeasure metrics."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 so scores reach compute_metrics unrounded and the numbers equal the direct call.
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://github.com/asvspoof-challenge/asvspoof5/tree/main/evaluation-package"],
        )

    def _compute(
        self, predictions, references, p_spoof: float = P_SPOOF, c_miss: float = C_MISS, c_fa: float = C_FA
    ) -> dict[str, float]:
        return compute_metrics(predictions, references, p_spoof=p_spoof, c_miss=c_miss, c_fa=c_fa)
