"""The README's main job (python -m training.encoders.tiny_random) runs end to end and says what fired."""

from training.encoders import tiny_random as quickstart


def test_quickstart_scores_a_clip_and_round_trips_the_model(tmp_path, capsys):
    quickstart.main(["--output_dir", str(tmp_path), "--num_experts", "4", "--rank", "4"])
    printed = capsys.readouterr().out
    assert "verdict" in printed and "Experts that fired:" in printed
    assert "layer_0: expert_" in printed and "layer_1: expert_" in printed
    assert "identical logits" in printed
    assert (tmp_path / "model" / "experts" / "expert_3" / "adapter_model.safetensors").is_file()


def test_generated_clip_is_deterministic_and_bounded():
    a, b = quickstart.generated_clip(seed=1), quickstart.generated_clip(seed=1)
    assert (a == b).all() and a.dtype.name == "float32" and abs(a).max() <= 0.5 + 1e-6
