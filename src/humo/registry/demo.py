"""``humo demo``: a Gradio page to try a model, calling the one :func:`humo.inference.generate.generate`.

    humo demo --model models:/humo@champion          # a registered model (tracking.uri)
    humo demo --checkpoint artifacts/train_stage2    # a training output (or an adapter folder)

The page takes a prompt, a reference image, speech (an upload, or the microphone where the browser allows it),
the mode, steps, guidance scales, seed and speed preset, with upstream's example request one click away. Solver
steps show as progress while a video is made; the result plays with its audio (H.264 + AAC mp4, index first, so
the browser plays it as it is) beside its sidecar, shown and downloadable. A bad input shows the request's own
message (the field and what is allowed) and the page keeps working. Requests queue, ``demo.concurrency`` at a
time on one loaded model (generations on one pipeline run in turn anyway); the server binds ``demo.host``
(127.0.0.1) unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from humo.config import SPEED_BUILTINS, DemoConfig, GenerateConfig, RequestLimitsConfig
from humo.constants import AUDIO_SAMPLE_RATE
from humo.inference.generate import (
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    generate,
    read_audio_input,
    read_image,
)
from humo.inference.pipeline import HumoPipeline

logger = logging.getLogger(__name__)

MODES = ("TIA", "TA", "TI", "T")
"""Generation modes offered on the page (the first is the default)."""
EXAMPLE_PROMPT = (
    "A man in a dark suit speaks to the camera in a bright studio, calm and friendly, looking straight ahead."
)
"""A prompt for upstream's example request (its image and speech: ``humo_man_Jaime.png``, ``humo_audio1.wav``)."""


@dataclass
class DemoHandler:
    """Turns the page's fields into a request, generates it and returns what the page shows."""

    pipeline: HumoPipeline
    settings: GenerateConfig
    limits: RequestLimitsConfig
    model: ModelInfo
    out_dir: Path

    def request(
        self, prompt: str, image: str | None, audio: str | None, mode: str, steps: float, scale_text: float,
        scale_image: float, scale_audio: float, seed: float, speed: str,
    ) -> GenerationRequest:
        """The checked request (:class:`InvalidRequestError` names the bad field)."""
        fields: dict[str, Any] = {
            "prompt": prompt, "mode": mode, "steps": int(steps), "seed": int(seed), "speed": speed,
            "scale_text": scale_text, "scale_image": scale_image, "scale_audio": scale_audio,
        }
        if "I" in mode:
            if not image:
                raise InvalidRequestError("image", f"mode {mode} needs a reference image; add one or pick mode {mode.replace('I', '')}")
            fields["image"] = read_image(Path(image), self.limits)
        if "A" in mode:
            if not audio:
                raise InvalidRequestError("audio", f"mode {mode} needs speech; add it or pick mode {mode.replace('A', '')}")
            fields["audio"] = read_audio_input(Path(audio))
        return GenerationRequest.from_fields(fields)

    def __call__(
        self, prompt: str, image: str | None, audio: str | None, mode: str, steps: float, scale_text: float,
        scale_image: float, scale_audio: float, seed: float, speed: str,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way to ask for progress)
    ) -> tuple[str, dict[str, Any], str]:
        """Page fields -> (mp4 path, sidecar, sidecar path); the solver's progress bar shows on the page. Errors are
        :class:`gradio.Error` with the request's message."""
        start = time.perf_counter()
        try:
            request = self.request(prompt, image, audio, mode, steps, scale_text, scale_image, scale_audio, seed, speed)
            stem = self.out_dir / f"humo-{time.strftime('%Y%m%d-%H%M%S')}-{int(start * 1000) % 1000:03d}"
            result = generate(
                self.pipeline, request, self.settings, self.limits, video_path=stem.with_suffix(".mp4"),
                sidecar_path=stem.with_suffix(".json"), model=self.model, progress=True,
            )
        except InvalidRequestError as err:
            logger.info("demo: refused a request: %s", err)
            raise gr.Error(str(err), title="Invalid input") from None
        sidecar_path = stem.with_suffix(".json")
        logger.info("demo: %s in %.1f s", result.output.path, time.perf_counter() - start)
        return str(result.output.path), json.loads(sidecar_path.read_text()), str(sidecar_path)


def build_page(handler: DemoHandler, speed_names: list[str], example: tuple[str, str, str] | None, title: str):
    """The Gradio Blocks page around ``handler`` (not launched)."""
    upstream = handler.settings.guidance
    with gr.Blocks(title="humo demo") as page:
        gr.Markdown(f"# humo: a talking person from a prompt, a photo and speech\nModel: `{title}`")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                image = gr.Image(label="Reference image", type="filepath", elem_id="image")
                audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"], elem_id="audio")
                mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="mode")
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(1, handler.limits.max_steps, value=min(handler.settings.steps, handler.limits.max_steps),
                                      step=1, label="Steps", elem_id="steps")
                    top = handler.limits.max_guidance_scale
                    scale_text = gr.Slider(0, top, value=upstream.scale_text or 7.5, label="Text guidance", elem_id="scale_text")
                    scale_image = gr.Slider(0, top, value=upstream.scale_image or 5.0, label="Image guidance", elem_id="scale_image")
                    scale_audio = gr.Slider(0, top, value=upstream.scale_audio or 5.5, label="Audio guidance", elem_id="scale_audio")
                    seed = gr.Number(value=handler.settings.seed, precision=0, label="Seed", elem_id="seed")
                    speed = gr.Dropdown(speed_names, value="config", label="Speed preset", elem_id="speed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video", elem_id="video", autoplay=False)
                sidecar = gr.JSON(label="Sidecar", elem_id="sidecar")
                download = gr.File(label="Sidecar (JSON)", elem_id="sidecar_file")
        inputs = [prompt, image, audio, mode, steps, scale_text, scale_image, scale_audio, seed, speed]
        if example is not None:
            gr.Examples([[*example, "TIA"]], inputs=[prompt, image, audio, mode], label="Upstream's example request")
        button.click(handler, inputs=inputs, outputs=[video, sidecar, download], api_name="generate")
    return page


def run(
    pipeline: HumoPipeline,
    model: ModelInfo,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    demo: DemoConfig,
    example_dir: Path | None = None,
    block: bool = True,
):
    """Launch the page; returns ``(page, local_url)`` (with ``block=False`` the server runs in a thread).

    Args:
        pipeline: the loaded pipeline.
        model: what the sidecars say about it.
        settings, limits: the ``generate`` and ``limits`` sections.
        demo: host, port, concurrency and output folder (``demo`` section).
        example_dir: a folder with upstream's ``humo_man_Jaime.png`` and ``humo_audio1.wav``: the one-click example.
    """
    out_dir = Path(demo.out_dir) if demo.out_dir is not None else Path(tempfile.mkdtemp(prefix="humo-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = DemoHandler(pipeline, settings.model_copy(update={"progress_bar": True}), limits, model, out_dir)
    example = None
    if example_dir is not None and (example_dir / "humo_man_Jaime.png").is_file():
        example = (EXAMPLE_PROMPT, str(example_dir / "humo_man_Jaime.png"), str(example_dir / "humo_audio1.wav"))
    speed_names = [*SPEED_BUILTINS[::-1], *settings.speed_presets]
    page = build_page(handler, speed_names, example, f"{model.name} {model.version}")
    page.queue(default_concurrency_limit=demo.concurrency, max_size=demo.max_queue)
    allowed = [str(out_dir)] + ([str(example_dir)] if example is not None else [])
    _, url, _ = page.launch(
        server_name=demo.host, server_port=demo.port, prevent_thread_lock=not block, allowed_paths=allowed,
        show_error=True, quiet=not block,
    )
    logger.info("demo: %s (model %s, audio at %d Hz)", url, model.name, AUDIO_SAMPLE_RATE)
    return page, url
