"""The documented domain-adaptation path, end to end, on a model that ships `routing_signatures.json`:
add experts -> save the pack -> load it on the shipped model -> score -> pipeline -> save -> reload -> same score.

The routing signatures were derived before the new experts existed. They are extended (the new experts' columns are
0: the usage those experts had in the model the signatures came from), `novelty.signatures` says so, and
`save_pretrained` keeps what is valid and says what it dropped."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import randomize_experts
from transformers import pipeline

from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification
from modeling_molex.novelty import SIGNATURES_FILE


CROP = 3200  # 0.2 s windows at 16 kHz: a few windows per clip, fast


def speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * (150 + 30 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def mean_usage(model, wave) -> list[float]:
    return model.score_waveform(wave, 16_000).window_expert_usage.mean(0).reshape(-1).double().tolist()


@pytest.fixture(scope="module")
def shipped(tiny_backbone_dirs, tmp_path_factory) -> str:
    """A trained-looking model folder with the routing signatures the expert analysis writes next to it."""
    folder = tmp_path_factory.mktemp("shipped") / "model"
    torch.manual_seed(0)
    model = MoLExForAudioClassification.from_backbone(
        tiny_backbone_dirs["wav2vec2"], adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4), crop_samples=CROP
    ).eval()
    randomize_experts(model, std=0.5, seed=1)
    model.save_pretrained(folder)
    signatures = {
        "distance": "L1 distance to the nearest known centroid / (2 * top_k * routers)",
        "top_k": 2,
        "router_names": model.router_names,
        "threshold": 0.25,
        "known": {"bonafide": mean_usage(model, speech(0.6, 1)), "A01": mean_usage(model, speech(0.6, 2))},
    }
    (folder / SIGNATURES_FILE).write_text(json.dumps(signatures, indent=2))
    return str(folder)


def train_new_pack(model, seed: int = 7) -> None:
    """Stand-in for training the new pack: random deltas, and router rows strong enough that the new experts win."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("lora_B.1", "molex_router.weight.1")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 3.0)


def padded(vector: list[float], routers: int, old: int, new: int) -> np.ndarray:
    return np.pad(np.asarray(vector).reshape(routers, old), ((0, 0), (0, new - old))).reshape(-1)


@pytest.fixture(scope="module")
def pack(shipped, tmp_path_factory) -> str:
    trainer = MoLExForAudioClassification.from_pretrained(shipped).eval()
    trainer.add_experts(2, pack_name="new_domain")
    train_new_pack(trainer)
    folder = tmp_path_factory.mktemp("pack") / "new_domain"
    assert trainer.save_experts(folder, names=["new_domain"]) == ["expert_4", "expert_5"]
    return str(folder)


def test_the_documented_path_scores_serves_saves_and_reloads_the_same_score(shipped, pack, tmp_path, caplog):
    wave = speech(0.9, 5)
    model = MoLExForAudioClassification.from_pretrained(shipped).eval()
    before = model.score_waveform(wave, 16_000)
    assert before.novelty.signatures == "derived"
    assert model.load_experts(pack) == ["new_domain"]

    adapted = model.score_waveform(wave, 16_000)
    assert adapted.score != before.score  # the new experts take part in routing
    assert adapted.window_expert_usage[..., 4:].sum() > 0
    assert adapted.novelty.signatures == "extended"
    # The distance is the one to the zero-extended signatures (2 routers x 6 experts).
    shipped_file = json.loads(open(f"{shipped}/{SIGNATURES_FILE}").read())
    routers = len(model.router_names)
    windows = adapted.window_expert_usage.double().numpy().reshape(len(adapted.window_scores), -1)
    expected = {
        name: np.abs(windows - padded(vector, routers, 4, 6)).sum(-1) / (2 * 2 * routers)
        for name, vector in shipped_file["known"].items()
    }
    nearest = np.minimum(expected["bonafide"], expected["A01"]).mean()
    assert adapted.novelty.distance == pytest.approx(nearest, abs=1e-9)

    classify = pipeline(
        "audio-classification",
        model=model,
        feature_extractor=model.feature_extractor(),
        pipeline_class=model.pipeline_class(),
    )
    scores = {row["label"]: row["score"] for row in classify({"array": wave, "sampling_rate": 16_000})}
    assert scores["bonafide"] == pytest.approx(adapted.bonafide_probability, abs=1e-12)

    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path / "adapted")
    assert "extended" in caplog.text and "expert_4, expert_5" in caplog.text
    saved = json.loads((tmp_path / "adapted" / SIGNATURES_FILE).read_text())
    assert saved["extended_experts"] == ["expert_4", "expert_5"] and saved["dropped"] == []
    assert saved["expert_packs"] == {"base": 4, "new_domain": 2}
    assert saved["threshold"] == 0.25 and saved["top_k"] == 2 and saved["router_names"] == model.router_names
    for name, vector in shipped_file["known"].items():
        np.testing.assert_array_equal(saved["known"][name], padded(vector, routers, 4, 6))

    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path / "adapted").eval()
    again = reloaded.score_waveform(wave, 16_000)
    assert again.score == adapted.score
    assert again.novelty == adapted.novelty and again.novelty.signatures == "extended"


def test_the_shipped_model_still_scores_with_its_own_signatures_beside_an_adapted_one(shipped, pack):
    """Both read the same file; each gets signatures of its own width (no shared cache entry)."""
    wave = speech(0.5, 6)
    adapted = MoLExForAudioClassification.from_pretrained(shipped).eval()
    adapted.load_experts(pack)
    assert adapted.score_waveform(wave, 16_000).novelty.signatures == "extended"
    plain = MoLExForAudioClassification.from_pretrained(shipped).eval()
    assert plain.score_waveform(wave, 16_000).novelty.signatures == "derived"
    assert adapted.score_waveform(wave, 16_000).novelty.signatures == "extended"


def test_add_experts_on_the_shipped_model_keeps_scoring(shipped):
    model = MoLExForAudioClassification.from_pretrained(shipped).eval()
    model.add_experts(3, pack_name="fresh")
    result = model.score_waveform(speech(0.4, 3), 16_000)
    assert result.novelty.signatures == "extended" and 0.0 <= result.novelty.distance <= 1.0
    assert model.routing_signatures().extended_experts == ("expert_4", "expert_5", "expert_6")


def test_with_only_the_old_packs_active_novelty_is_exactly_the_shipped_models(shipped, pack):
    """The case in which the extension is exact: routing never reaches the new experts."""
    wave = speech(0.7, 8)
    shipped_model = MoLExForAudioClassification.from_pretrained(shipped).eval()
    model = MoLExForAudioClassification.from_pretrained(shipped).eval()
    model.load_experts(pack)
    model.set_active_packs(["base"])
    ours, theirs = model.score_waveform(wave, 16_000).novelty, shipped_model.score_waveform(wave, 16_000).novelty
    assert (ours.nearest, ours.novel) == (theirs.nearest, theirs.novel)
    assert ours.distance == pytest.approx(theirs.distance, abs=1e-12)


def _copy_with_signatures(shipped: str, tmp_path, **changes) -> str:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(shipped, folder)
    signatures = json.loads((folder / SIGNATURES_FILE).read_text())
    (folder / SIGNATURES_FILE).write_text(json.dumps({**signatures, **changes}))
    return str(folder)


def test_saving_names_the_fields_it_does_not_carry_over(shipped, tmp_path, caplog):
    folder = _copy_with_signatures(shipped, tmp_path, calibrated_on="train split of run 3")
    model = MoLExForAudioClassification.from_pretrained(folder)
    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / SIGNATURES_FILE).read_text())
    assert saved["dropped"] == ["field 'calibrated_on': not a routing-signatures field, not carried over"]
    assert "calibrated_on" in caplog.text
    assert (
        saved["extended_experts"] == []
        and saved["known"] == json.loads(open(f"{shipped}/{SIGNATURES_FILE}").read())["known"]
    )


def test_signatures_that_do_not_fit_the_model_are_not_saved_and_a_warning_says_why(shipped, tmp_path, caplog):
    folder = _copy_with_signatures(shipped, tmp_path, top_k=1)
    model = MoLExForAudioClassification.from_pretrained(folder)
    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / SIGNATURES_FILE).exists()
    assert "not saved" in caplog.text and "top_k is 1 but this model routes to top_k=2" in caplog.text


def test_signatures_of_an_earlier_save_are_not_left_beside_other_weights(shipped, tmp_path, caplog):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(shipped, folder)
    torch.manual_seed(3)
    other = MoLExForAudioClassification.from_pretrained(shipped)
    other.name_or_path = ""  # a model that ships no signatures of its own
    randomize_experts(other, seed=9)
    with caplog.at_level(logging.WARNING):
        other.save_pretrained(folder)
    assert not (folder / SIGNATURES_FILE).exists()
    assert f"{folder / SIGNATURES_FILE}" in caplog.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"expert_packs": {"other": 4}}, r"`expert_packs` \{'other': 4\} are not the first packs of this model"),
        ({"extended_experts": "expert_4"}, "'extended_experts' must be a list of expert names"),
    ],
)
def test_signatures_for_other_experts_are_refused_naming_the_field(shipped, pack, tmp_path, changes, message):
    folder = _copy_with_signatures(shipped, tmp_path, **changes)
    model = MoLExForAudioClassification.from_pretrained(folder)
    model.load_experts(pack)
    with pytest.raises(ValueError, match=message) as error:
        model.score_waveform(speech(0.3, 4), 16_000)
    assert SIGNATURES_FILE in str(error.value)


def test_an_expert_count_off_the_pack_boundaries_is_refused(shipped, pack, tmp_path):
    """5 experts per router in the signatures: not the experts of any prefix of this model's packs."""
    signatures = json.loads(open(f"{shipped}/{SIGNATURES_FILE}").read())
    known = {name: padded(v, 2, 4, 5).tolist() for name, v in signatures["known"].items()}
    folder = _copy_with_signatures(shipped, tmp_path, known=known)
    model = MoLExForAudioClassification.from_pretrained(folder)
    model.load_experts(pack)
    with pytest.raises(ValueError, match="signatures have 10 values but this model has 2 routers x 6 experts = 12"):
        model.score_waveform(speech(0.3, 4), 16_000)
