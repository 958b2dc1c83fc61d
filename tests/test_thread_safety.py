"""One model instance serves many threads: routing state belongs to the call, so concurrent forwards give exactly
the results of sequential ones (issue 10, item 1)."""

import threading

import numpy as np
import pytest
import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config
from transformers import pipeline

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


NUM_THREADS = 4
CALLS_PER_THREAD = 6


def build(**adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 4, "top_k": 2, "r": 4, **adapter_kwargs})
    torch.manual_seed(0)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, std=0.5)
    return model.eval()


def inputs_for(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different batch sizes, lengths and padding per call, so that a decision read from another call is wrong."""
    batch, samples = 1 + index % 3, 2400 + 400 * (index % 5)
    audio = random_audio(batch, samples, seed=index)
    mask = torch.ones_like(audio, dtype=torch.long)
    mask[0, samples - 300 * (index % 4) :] = 0
    return audio, mask


def run_concurrently(work, num_calls: int) -> dict[int, object]:
    """Call `work(i)` for every i from NUM_THREADS threads started together; returns results by i."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(NUM_THREADS)

    def worker(thread_index: int) -> None:
        barrier.wait()
        for i in range(thread_index, num_calls, NUM_THREADS):
            try:
                results[i] = work(i)
            except BaseException as error:  # noqa: BLE001 - reported below with the call that raised
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(NUM_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"{len(errors)} concurrent calls raised, first: {errors[0]!r}"
    return results


@pytest.mark.parametrize("granularity", ["token", "utterance"])
@pytest.mark.parametrize("scope", ["block", "module"])
def test_concurrent_forwards_equal_sequential_ones(granularity, scope):
    model = build(router_granularity=granularity, router_scope=scope)
    num_calls = NUM_THREADS * CALLS_PER_THREAD

    def forward(i: int):
        audio, mask = inputs_for(i)
        with torch.no_grad():
            out = model(audio, attention_mask=mask)
        return out.logits, out.expert_usage

    sequential = {i: forward(i) for i in range(num_calls)}
    concurrent = run_concurrently(forward, num_calls)
    wrong = [i for i in range(num_calls) if not all(map(torch.equal, sequential[i], concurrent[i]))]
    assert not wrong, f"{len(wrong)} of {num_calls} concurrent forwards differ from the sequential result"


def test_one_pipeline_shared_by_threads_equals_sequential_calls():
    model = build()
    classifier = pipeline("audio-classification", model=model, feature_extractor=model.feature_extractor())
    clips = [random_audio(1, 1600 + 320 * (i % 7), seed=100 + i)[0].numpy().astype(np.float32) for i in range(24)]

    def classify(i: int):
        return [(row["label"], row["score"]) for row in classifier(clips[i])]

    sequential = {i: classify(i) for i in range(len(clips))}
    concurrent = run_concurrently(classify, len(clips))
    wrong = [i for i in range(len(clips)) if sequential[i] != concurrent[i]]
    assert not wrong, f"{len(wrong)} of {len(clips)} concurrent pipeline calls differ from the sequential result"


def test_routing_state_is_not_kept_on_the_model():
    """No forward leaves routing decisions behind on the model (they would be what threads race on)."""
    model = build()
    audio, mask = inputs_for(1)
    with torch.no_grad():
        model(audio, attention_mask=mask)
    held = [
        name
        for name, module in model.named_modules()
        for attribute, value in vars(module).items()
        if "context" in attribute.lower() or "records" in attribute.lower()
    ]
    assert not held, f"modules keep per-call routing state: {held}"
