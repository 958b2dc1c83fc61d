"""Piper VITS synthesis in its OWN process: JSON-lines jobs on stdin, one float32 file per job, results on stdout.

    python -I training/corpus/piper_process.py --model M.onnx --config M.onnx.json --seed N --threads 2 < jobs

Why a separate process: the Piper engine (piper-tts) is GPL-3.0-or-later, so no module of this project imports it.
The corpus builder runs this file (``-I``: no project directory on sys.path) the way it runs espeak-ng or
festival, and reads back plain samples; this file imports nothing from the project.

Why one process for every clip: loading the voice costs about a second, and VITS draws its noise inside ONNX
Runtime (two RandomNormalLike nodes) from a generator that is seeded once, when the session is created
(``onnxruntime.set_seed`` before it), and then advances with every clip. So the same jobs, in the same order, with
the same seed and the same number of threads give identical samples; another order, another thread count or
another onnxruntime build may not (4 threads already changed the last bits against 1 or 2 here).

Job: ``{"text", "out", "length_scale", "noise_scale", "noise_w"}``. Result: ``{"out", "rate", "samples"}``; the
file at ``out`` holds the engine's raw float32 output (``normalize_audio`` off: the corpus sets the level itself).
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig


def load_voice(model: str, config: str, seed: int, threads: int) -> PiperVoice:
    onnxruntime.set_seed(seed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    with open(config, encoding="utf-8") as handle:
        return PiperVoice(session=session, config=PiperConfig.from_dict(json.load(handle)))


def synthesize(voice: PiperVoice, job: dict) -> np.ndarray:
    settings = SynthesisConfig(
        length_scale=float(job["length_scale"]),
        noise_scale=float(job["noise_scale"]),
        noise_w_scale=float(job["noise_w"]),
        normalize_audio=False,
    )
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(job["text"], settings)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    voice = load_voice(args.model, args.config, args.seed, args.threads)
    for number, line in enumerate(sys.stdin, start=1):
        job = json.loads(line)
        audio = synthesize(voice, job)
        if audio.size == 0 or not np.any(audio) or not np.all(np.isfinite(audio)):
            print(f"job {number} ({job['text']!r}): Piper produced no finite audio", file=sys.stderr)
            return 1
        audio.astype("<f4").tofile(job["out"])
        result = {"out": job["out"], "rate": voice.config.sample_rate, "samples": int(audio.size)}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
