"""MoLEx audio deepfake detector: a Gradio app (and a Hugging Face Space).

    python space_app/app.py [--model DIR_OR_HUB_ID] [--host 127.0.0.1] [--port 7860] [--max_seconds 120]

The model is `--model`, else `MOLEX_MODEL`, else the folder the main job writes (`outputs/main/model`): any MoLEx
folder or Hub repo id, loaded once through AutoModel + remote code. The endpoint `/classify` serves the UI and the
API alike: `gradio_client.Client(url).predict(handle_file(path), api_name="/classify")` returns (label, summary,
timeline plot, expert-usage plot, novelty text, all numbers as JSON). The scoring is the model's own
(`model.score_file`); this file only lays out the page. The Live tab (live.py) streams the microphone into the
model's `streaming_scorer`, one per browser session. Only the example clips are served, copied under neutral
names (never their corpus folder, its protocols or labels).
"""

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import gradio as gr
from detector import MAX_SECONDS, Detector, InputError, default_model
from example_clips import ExampleClip, example_clips, find_examples_dir
from figures import expert_usage_figure, timeline_figure
from live import build_live_tab


logger = logging.getLogger("molex.space")
VERDICTS = {"bonafide": "bona fide", "spoof": "spoof"}
DECISION_THRESHOLD = 0.0  # the model's verdict: bona fide when the score is >= 0 (equal priors and costs)

DESCRIPTION = """\
# MoLEx: is this voice real?
Upload or record speech. A frozen speech SSL encoder with a **Mixture of LoRA Experts** scores it: each
{window:.2f} s window of the clip is routed to a few experts per layer, and the clip's score is the mean of its
window scores (higher = more bona fide; the verdict is *bona fide* when the score is at least {threshold:g}).
Model: `{model}`. Audio up to {max_seconds:g} s, any sample rate, mono or stereo.
"""


def summary_markdown(result) -> str:
    if result.calibrated:
        meaning = "a calibrated log-likelihood ratio"
    else:
        meaning = "uncalibrated: logit(bona fide) − logit(spoof); this model has no calibration"
    clip = f"Clip: {result.duration:.2f} s at {result.sampling_rate} Hz, {result.channel_policy}"
    if result.silent:
        return (
            f"### Verdict: none (near-silent)\n"
            f"The clip's level is {result.level_dbfs:.1f} dBFS: there is no speech to judge.  \n{clip}."
        )
    windows = len(result.window_scores)
    window_text = (
        f"{windows} windows of {result.window_seconds:.2f} s, clip score = mean of the window scores"
        if windows > 1
        else f"one window of {result.window_seconds:.2f} s (shorter clips are repeated to fill it)"
    )
    return (
        f"### Verdict: {VERDICTS[result.verdict]}\n"
        f"Score **{result.score:+.4f}** ({meaning}).  \n"
        f"{clip}; {window_text}."
    )


def novelty_markdown(result) -> str:
    novelty = result.novelty
    if result.silent:
        return "**Novel-attack indicator:** not computed for a near-silent clip."
    if novelty is None:
        return "**Novel-attack indicator:** not available for this model (it ships no routing signatures)."
    nearest = "bona fide speech" if novelty.nearest == "bonafide" else f"attack {novelty.nearest}"
    if novelty.novel:
        finding = "routing unlike every class seen in training: **possibly a novel attack**"
    else:
        finding = f"routing like known {nearest}"
    caveat = "" if result.verdict == "spoof" else " It matters most for clips judged spoof."
    return (
        f"**Novel-attack indicator:** {finding} (nearest: {nearest}, distance {novelty.distance:.3f} on a 0-1 "
        f"scale; novel above {novelty.threshold:.3f}).{caveat}"
    )


def build_demo(detector: Detector, examples: list[ExampleClip] = ()) -> gr.Blocks:
    """The page: audio in; verdict, score, per-window timeline, expert usage, novelty and raw numbers out."""

    def classify(audio_path: str | None):
        try:
            result = detector.predict(audio_path)
        except InputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:
            logger.exception("scoring an upload failed")
            raise gr.Error("Scoring this clip failed unexpectedly; the server log has the details.") from None
        numbers = result.to_dict()
        numbers.pop("window_expert_usage")
        if result.silent:
            return ({"near-silent": 1.0}, summary_markdown(result), gr.Plot(value=None, visible=False), None,
                    novelty_markdown(result), numbers)  # fmt: skip
        timeline = None
        if len(result.window_scores) > 1:
            timeline = timeline_figure(
                result.window_starts.tolist(),
                result.window_scores.tolist(),
                result.window_seconds,
                result.score,
                result.calibrated,
                DECISION_THRESHOLD,
            )
        probability = result.bonafide_probability
        return (
            {"bona fide": probability, "spoof": 1.0 - probability},
            summary_markdown(result),
            gr.Plot(value=timeline, visible=timeline is not None),
            expert_usage_figure(result.expert_usage.tolist(), result.router_names),
            novelty_markdown(result),
            numbers,
        )

    with gr.Blocks(title="MoLEx audio deepfake detector") as demo:
        gr.Markdown(
            DESCRIPTION.format(
                window=detector.window_seconds,
                threshold=DECISION_THRESHOLD,
                model=detector.model_name,
                max_seconds=detector.max_seconds,
            )
        )
        with gr.Tab("Upload or record", id="upload"):
            with gr.Row():
                with gr.Column():
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech clip")
                    detect = gr.Button("Detect", variant="primary")
                    if examples:
                        gr.Examples(
                            examples=[[clip.path] for clip in examples],
                            inputs=[audio],
                            example_labels=[clip.label for clip in examples],
                            label="Examples from the mini corpus",
                        )
                with gr.Column():
                    label = gr.Label(label="Verdict", num_top_classes=2)
                    summary = gr.Markdown()
                    novelty = gr.Markdown()
            timeline = gr.Plot(label="Score per window", visible=False, elem_id="timeline")
            usage = gr.Plot(label="Expert usage", elem_id="expert-usage")
            with gr.Accordion("All numbers (the API returns the same)", open=False):
                details = gr.JSON(label="Result")
            detect.click(
                classify,
                inputs=[audio],
                outputs=[label, summary, timeline, usage, novelty, details],
                api_name="classify",
            )
        with gr.Tab("Live", id="live"):
            build_live_tab(detector.model, detector.max_seconds)
    demo.queue(default_concurrency_limit=2, max_size=64)  # the model is state-free: requests may overlap
    return demo


def serve_examples(examples: list[ExampleClip], folder: Path) -> list[ExampleClip]:
    """Copies of the example clips under neutral names in `folder`: the page and the file route see only these."""
    copies = []
    for number, clip in enumerate(examples, start=1):
        target = folder / f"example_{number}{Path(clip.path).suffix.lower()}"
        shutil.copyfile(clip.path, target)
        copies.append(ExampleClip(str(target), clip.label))
    return copies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: $MOLEX_MODEL, then the main job's folder)")
    parser.add_argument("--max_seconds", type=float, default=MAX_SECONDS, help="longest clip accepted")
    parser.add_argument("--examples_dir", help="corpus in the ASVspoof 5 layout (default: $MOLEX_EXAMPLES_DIR)")
    parser.add_argument("--host", help="default: gradio's (127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="default: gradio's (7860, or $GRADIO_SERVER_PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up health checks

    try:
        model = args.model or default_model()
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    detector = Detector(model, max_seconds=args.max_seconds)
    examples_dir = find_examples_dir(args.examples_dir)
    examples = serve_examples(example_clips(examples_dir), Path(tempfile.mkdtemp(prefix="molex-examples-")))
    logger.info("model %s loaded; %d example clips from %s", model, len(examples), examples_dir)
    demo = build_demo(detector, examples)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[clip.path for clip in examples] or None,  # the clips themselves, not a folder
        max_file_size="50mb",
        theme=gr.themes.Soft(),
    )


if __name__ == "__main__":
    main()
