"""`config.class_weights = [spoof, bonafide]` weight each clip's cross-entropy by the weight of ITS label.

PyTorch's weighted mean: loss = sum_i w[y_i] * l_i / sum_i w[y_i] (+ the auxiliary losses). Pinned with one spoof
(label 0) and one bona fide (label 1) clip whose per-clip losses differ a lot, so weighting the wrong class shows.
"""

import pytest
import torch
from conftest import random_audio, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


LABELS = torch.tensor([0, 1])  # clip 0 spoof, clip 1 bona fide


def model_that_says_spoof() -> MoLExForAudioClassification:
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    last_linear = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last_linear.bias.copy_(torch.tensor([2.0, -2.0]))  # every clip looks spoof: l(spoof) small, l(bonafide) big
    return model.eval()


def per_clip_losses(logits: torch.Tensor) -> tuple[float, float]:
    log_probs = logits.float().log_softmax(-1)
    return -log_probs[0, 0].item(), -log_probs[1, 1].item()


@pytest.mark.parametrize("weights", [[1.0, 9.0], [9.0, 1.0], [0.5, 2.0]])
def test_loss_is_the_label_weighted_mean_of_clip_losses(weights):
    model = model_that_says_spoof()
    model.config.class_weights = weights
    with torch.no_grad():
        out = model(random_audio(), labels=LABELS)
    spoof_loss, bonafide_loss = per_clip_losses(out.logits)
    assert bonafide_loss - spoof_loss > 1.0  # the test can tell which clip got which weight
    expected = (weights[0] * spoof_loss + weights[1] * bonafide_loss) / (weights[0] + weights[1])
    assert (out.loss - out.aux_loss).item() == pytest.approx(expected, rel=1e-5)


def test_weighting_a_class_grows_its_share_of_the_loss():
    """Up-weighting bona fide moves the loss towards the bona fide clip's loss; up-weighting spoof towards the
    spoof clip's; equal weights change nothing."""
    model = model_that_says_spoof()
    with torch.no_grad():
        plain = model(random_audio(), labels=LABELS)
        model.config.class_weights = [3.0, 3.0]
        equal = model(random_audio(), labels=LABELS)
        model.config.class_weights = [1.0, 9.0]
        bonafide_weighted = model(random_audio(), labels=LABELS)
        model.config.class_weights = [9.0, 1.0]
        spoof_weighted = model(random_audio(), labels=LABELS)
    torch.testing.assert_close(equal.loss, plain.loss)
    spoof_loss, bonafide_loss = per_clip_losses(plain.logits)
    assert spoof_loss < spoof_weighted.loss.item() < plain.loss.item() < bonafide_weighted.loss.item() < bonafide_loss


def test_one_class_batch_is_unaffected_by_the_other_class_weight():
    """A batch of bona fide clips only: the spoof weight does not enter the loss at all."""
    model = model_that_says_spoof()
    labels = torch.tensor([1, 1])
    with torch.no_grad():
        model.config.class_weights = [1.0, 2.0]
        first = model(random_audio(), labels=labels).loss
        model.config.class_weights = [50.0, 2.0]
        second = model(random_audio(), labels=labels).loss
    torch.testing.assert_close(first, second)
