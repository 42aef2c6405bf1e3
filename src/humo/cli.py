"""The ``humo`` command: one subcommand per pipeline stage, each calling that stage's ``run()``.

Every subcommand takes ``--params PATH`` and any number of dotted ``key=value`` overrides, loads params.yaml
once through :func:`humo.config.load_params`, and hands the stage only the sections it uses (the table
:data:`STAGE_SECTIONS` says which; a test keeps it in step with ``dvc.yaml``).

Examples::

    humo synth                          # write SynthTalk into data/raw
    humo synth synth.num_clips=16       # the same with an override
    humo --version
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from humo import __version__
from humo.config import DEFAULT_PARAMS_PATH, ConfigError, Params, load_params

logger = logging.getLogger(__name__)

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("synth", "paths"),
    "train-vae": ("train_vae", "encoders", "tracking", "paths"),
    "curate": ("curate", "paths"),
    "validate": ("validation", "curate", "paths"),
    "precompute": ("precompute", "encoders", "paths"),
    "pretrain": ("pretrain", "train", "model", "tracking", "paths"),
    "train-stage1": ("train", "train_stage1", "model", "tracking", "paths"),
    "train-stage2": ("train", "train_stage2", "model", "tracking", "paths"),
    "register": ("registry", "limits", "tracking", "encoders", "generate", "paths"),
    "eval-set": ("evaluate", "paths"),
    "evaluate": ("evaluate", "generate", "limits", "encoders", "tracking", "paths"),
    "calibrate-cache": ("calibrate_cache", "generate", "limits", "encoders", "paths"),
    "speed-study": ("evaluate", "generate", "limits", "encoders", "paths"),
    "generate": ("generate", "limits", "encoders", "model", "tracking", "paths"),
    "export": ("model", "paths"),
    "demo": ("generate", "limits", "encoders", "model", "demo", "tracking", "paths"),
}
"""Command -> the params.yaml sections its ``run()`` receives (and that its DVC stage lists under ``params``)."""

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError)
"""Errors caused by input or settings: reported in one line with exit code 2, without a traceback."""

app = typer.Typer(
    name="humo",
    help="HuMo as MLOps software: data, training, evaluation, registry, serving and batch generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read.")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides applied on top of params.yaml, e.g. synth.num_clips=8.")
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"humo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """HuMo as MLOps software."""


def _load(params_path: Path, overrides: list[str] | None) -> Params:
    """Load params once and configure logging from them; exits with code 2 on a settings error."""
    from humo.log import setup_logging

    try:
        params = load_params(params_path, overrides or ())
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    setup_logging(params.logging.level)
    return params


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


@app.command()
def synth(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Render the SynthTalk dataset into paths.raw (HuMoSet layout)."""
    p = _load(params, overrides)
    from humo.data import synthtalk

    try:
        summary = synthtalk.run(cfg=p.synth, out_dir=p.paths.raw)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("%s", summary)


@app.command("train-vae")
def train_vae(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Train the embedded tiny VAE on SynthTalk: artifacts/train_vae (skipped with a note for encoders.vae.kind=wan)."""
    p = _load(params, overrides)
    from humo.training import vae as vae_stage

    try:
        metrics = vae_stage.run(
            cfg=p.train_vae,
            vae_cfg=p.encoders.vae,
            raw_dir=p.paths.raw,
            out_dir=p.paths.artifacts / vae_stage.STAGE_NAME,
            reports_dir=p.paths.reports,
            tracking=p.tracking,
        )
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("train_vae: %s", {k: v for k, v in metrics.items() if not isinstance(v, float) or k.startswith(("psnr", "mouth"))})


@app.command()
def curate(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Curate raw videos into clean, synchronised clips: artifacts/curate/manifest.parquet and rejects.jsonl."""
    p = _load(params, overrides)
    from humo.data import curate as curate_stage

    try:
        summary = curate_stage.run(cfg=p.curate, paths=p.paths)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("%s", summary)


@app.command()
def validate(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Check the curated manifest with Great Expectations; exits non-zero when an expectation fails."""
    p = _load(params, overrides)
    from humo.data import validate as validate_stage

    try:
        summary = validate_stage.run(cfg=p.validation, curate=p.curate, paths=p.paths)
    except USER_ERRORS as err:  # ValidationFailed is a ValueError: exit code 2, the failed expectations named
        raise _fail(err) from None
    logger.info("%s", summary)


@app.command()
def precompute(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Encode every manifest clip once into safetensors shards: artifacts/precompute (resumable)."""
    p = _load(params, overrides)
    from humo.features import precompute as precompute_stage

    try:
        summary = precompute_stage.run(cfg=p.precompute, encoders=p.encoders, paths=p.paths)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("%s", summary)


def _train(stage: int, params: Path, overrides: list[str] | None) -> None:
    p = _load(params, overrides)
    from humo.training import train
    from humo.training.system import NonFiniteLossError

    from humo.evaluation.samples import sample_callback

    stage_cfg = p.train_stage1 if stage == 1 else p.train_stage2
    samples = sample_callback(stage, p.train, p.tracking, p.paths) if train.samples_allowed(p.train) else None
    try:
        result = train.run(
            stage, train=p.train, stage_cfg=stage_cfg, model=p.model, tracking=p.tracking, paths=p.paths,
            callbacks=[samples] if samples is not None else (),
        )
    except (*USER_ERRORS, NonFiniteLossError) as err:
        raise _fail(err) from None
    logger.info("stage %d done: %s (MLflow run %s)", stage, result.out_dir, result.run_id)


@app.command()
def pretrain(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """The tiny DiT's text-to-video backbone (stand-in for Wan's T2V weights): pretrain.out, with provenance."""
    p = _load(params, overrides)
    from humo.training import pretrain as pretrain_stage
    from humo.training.system import NonFiniteLossError

    command = " ".join(["humo pretrain", *(overrides or [])])
    try:
        record = pretrain_stage.run(p.pretrain, p.train, p.model, p.tracking, p.paths, command=command)
    except (*USER_ERRORS, NonFiniteLossError) as err:
        raise _fail(err) from None
    logger.info("backbone %s: sha256 %s; commit it with its provenance.json", p.pretrain.out, record["weights_sha256"])


@app.command("train-stage1")
def train_stage1(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Stage 1, subject preservation (text + reference image): artifacts/train_stage1; resumes after a kill."""
    _train(1, params, overrides)


@app.command("train-stage2")
def train_stage2(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Stage 2, audio-visual sync, from the stage-1 checkpoint: artifacts/train_stage2; resumes after a kill."""
    _train(2, params, overrides)


@app.command()
def register(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Register the evaluated stage-2 model in MLflow; alias it candidate, and champion when the gate allows."""
    p = _load(params, overrides)
    from humo.registry import register as register_stage
    from humo.registry.mlflow_registry import RegistrationError

    try:
        decision = register_stage.run(
            registry=p.registry, limits=p.limits, tracking=p.tracking, encoders=p.encoders, generate=p.generate,
            paths=p.paths,
        )
    except (*USER_ERRORS, RegistrationError) as err:
        raise _fail(err) from None
    logger.info("registered %s version %s (promoted: %s)", decision["model_name"], decision["version"], decision["promoted"])


@app.command()
def serve(
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    alias: Annotated[str | None, typer.Option(help="Registry alias to serve; default registry.champion_alias.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind; default registry.host (loopback).")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default registry.port.")] = None,
    overrides: Overrides = None,
) -> None:
    """Serve models:/<registry.model_name>@<alias> over HTTP with MLflow's scoring server (until Ctrl-C)."""
    p = _load(params, overrides)
    from humo.registry import serve as serve_module

    try:
        code = serve_module.run(
            p.registry, p.tracking, alias=alias, host=host, port=port,
            sequence_parallel=p.generate.parallel.sequence_parallel,
        )
    except USER_ERRORS as err:
        raise _fail(err) from None
    raise typer.Exit(code)


@app.command()
def generate(
    requests: Annotated[Path, typer.Option("--requests", "-r", help="Upstream test_case.json or a .jsonl of requests.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one mp4 + one JSON sidecar per request.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Checkpoint folder (artifacts/train_stage2) or models:/name@alias.")
    ],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """Generate videos (with their audio) for a file of requests; bad requests are listed in <out>/summary.json."""
    p = _load(params, overrides)
    from humo.inference import batch

    resolvers = None
    if model.startswith("models:/"):
        import mlflow

        from humo.registry import MODEL_RESOLVERS

        mlflow.set_tracking_uri(p.tracking.uri)
        resolvers = MODEL_RESOLVERS
    try:
        summary = batch.run(
            p.generate, p.limits, p.encoders, p.paths, requests=requests, out_dir=out, model=model, resolvers=resolvers,
            model_cfg=p.model,
        )
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info(
        "generate: %d generated, %d skipped, %d failed (see %s)",
        summary.count("generated"),
        summary.count("skipped"),
        summary.count("failed"),
        out / batch.SUMMARY_FILE,
    )
    if summary.count("failed"):
        raise typer.Exit(1)


@app.command()
def export(
    src: Annotated[Path, typer.Argument(help="Training output folder (whole weights or a LoRA adapter) or a checkpoint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: the files, README.md (model card), export.json.")],
    fp8: Annotated[bool, typer.Option(help="The DiT in ComfyUI's scaled_fp8 layout.")] = False,
    merge: Annotated[bool, typer.Option(help="For an adapter: also the DiT with the adapter folded in.")] = False,
    layout: Annotated[str, typer.Option(help="auto (the release's layout), single or sharded.")] = "auto",
    evaluation: Annotated[
        Path | None, typer.Option(help="Evaluation report to quote in the card (default: reports/evaluate for the candidate).")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """Write a model in the files upstream's code, ComfyUI and LoRA loaders read, with a model card."""
    p = _load(params, overrides)
    from humo.registry import export as export_module

    if evaluation is None and src.resolve() == p.paths.candidate_dir.resolve():
        evaluation = p.paths.report_dir("evaluate")
    try:
        record = export_module.run(src, out, p.model, fp8=fp8, merge=merge, layout=layout, evaluation=evaluation)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("export: %s -> %s (%s)", src, out, ", ".join(record["files"]))


@app.command()
def demo(
    model: Annotated[str | None, typer.Option("--model", "-m", help="A registered model, e.g. models:/humo@champion.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A training output folder (default artifacts/train_stage2).")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default demo.port (7860).")] = None,
    examples: Annotated[
        Path, typer.Option(help="Folder with upstream's example image and speech (the one-click example).")
    ] = Path("../shared/data/real"),
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """A web page to try a model (Gradio, on demo.host: 127.0.0.1), until Ctrl-C."""
    p = _load(params, overrides)
    from humo.inference.generate import attach_adapters, build_pipeline, load_model
    from humo.registry import demo as demo_page

    if model is not None and checkpoint is not None:
        raise _fail(ValueError("give --model or --checkpoint, not both"))
    reference = model or str(checkpoint or p.paths.candidate_dir)
    resolvers = None
    if reference.startswith("models:/"):
        import mlflow

        from humo.registry import MODEL_RESOLVERS

        mlflow.set_tracking_uri(p.tracking.uri)
        resolvers = MODEL_RESOLVERS
    try:
        transformer, info = load_model(reference, resolvers, in_place=p.generate.memory.load_in_place)
        transformer, info = attach_adapters(transformer, info, p.model.adapters, p.model.merge_adapters)
        pipeline = build_pipeline(transformer, p.generate, p.encoders, p.paths.vae_dir, p.limits)
    except USER_ERRORS as err:
        raise _fail(err) from None
    settings = p.demo.model_copy(update={"port": port}) if port is not None else p.demo
    demo_page.run(pipeline, info, p.generate, p.limits, settings, example_dir=examples if examples.is_dir() else None)


@app.command("plan-memory")
def plan_memory(
    device: Annotated[str, typer.Option(help="GPU of the estimate: H100-80GB, A100-80GB or RTX4090-24GB.")] = "H100-80GB",
    frames: Annotated[int, typer.Option(help="Video frames (4k+1).")] = 97,
    steps: Annotated[int, typer.Option(help="Denoising steps per video.")] = 50,
) -> None:
    """Per-GPU memory and step time of HuMo-1.7B and HuMo-17B at 480p and 720p under each lever (a cost model)."""
    from humo.models import costs
    from humo.models.presets import get_preset

    if device not in costs.DEVICES:
        raise _fail(ValueError(f"unknown device {device!r}; use one of {sorted(costs.DEVICES)}"))
    models = {"HuMo-1.7B": get_preset("humo-1.7b"), "HuMo-17B": get_preset("humo-17b")}
    gpu = costs.DEVICES[device]
    typer.echo(costs.plan_markdown(costs.plan_rows(models, gpu, frames=frames), gpu, steps=steps))


@app.command("eval-set")
def eval_set(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Build the fixed evaluation set (held-out identities, unseen audio) under artifacts/eval_set."""
    p = _load(params, overrides)
    from humo.evaluation import evalset

    try:
        cases = evalset.run(p.evaluate, p.paths)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("eval-set: %d cases", len(cases))


@app.command()
def evaluate(
    candidate: Annotated[
        Path | None, typer.Option("--candidate", help="Checkpoint folder to evaluate (default artifacts/train_stage2).")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """Generate the evaluation set in each mode, write metrics, plots, report and the promotion gate."""
    p = _load(params, overrides)
    from humo.evaluation import evaluate as evaluate_module

    try:
        decision = evaluate_module.run(
            p.evaluate, p.generate, p.limits, p.encoders, p.paths, p.tracking, candidate=candidate
        )
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("evaluate: gate %s (%s)", "passed" if decision.passed else "failed", decision.reason)


@app.command("calibrate-cache")
def calibrate_cache(
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Checkpoint folder to fit (default artifacts/train_stage2).")
    ] = None,
    requests: Annotated[
        Path | None,
        typer.Option("--requests", "-r", help="test_case.json or .jsonl to calibrate on (default: training clips)."),
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """Fit the step cache on the model (exact runs, every branch recorded); writes generate.cache_calibration."""
    p = _load(params, overrides)
    from humo.inference import calibrate

    try:
        loaded = calibrate.requests_from_file(requests, p.limits) if requests is not None else None
        path = calibrate.run(p.calibrate_cache, p.generate, p.limits, p.encoders, p.paths, model=model, requests=loaded)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("calibrate-cache: wrote %s", path)


@app.command("speed-study")
def speed_study(
    candidate: Annotated[
        Path | None, typer.Option("--candidate", help="Checkpoint folder to study (default artifacts/train_stage2).")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """DiT forwards, seconds and quality of each speed setting against the full sampler (reports/speed)."""
    p = _load(params, overrides)
    from humo.evaluation import speed

    try:
        document = speed.run(p.evaluate, p.generate, p.limits, p.encoders, p.paths, candidate=candidate)
    except USER_ERRORS as err:
        raise _fail(err) from None
    logger.info("speed-study: best setting within noise: %s", document["best_within_noise"])


@app.command("evaluate-real")
def evaluate_real(
    video: Annotated[Path, typer.Argument(help="A real talking-person video.")],
    audio: Annotated[Path | None, typer.Option("--audio", help="Its speech, when not muxed in the video.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSON file for the figures (default: log only).")] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="An image of the person: adds the identity figure to it.")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    overrides: Overrides = None,
) -> None:
    """Sync (own audio vs a shifted copy vs a no-sync baseline), identity, face presence and quality of a real
    video."""
    import json

    p = _load(params, overrides)
    from humo.evaluation.real import describe, evaluate_real_video

    try:
        figures = evaluate_real_video(
            video, audio, p.evaluate.real_shift_frames, p.evaluate.real_max_offset,
            scorer=p.evaluate.real_sync_scorer, reference=reference, weights=p.evaluate.syncnet_weights,
        )
    except USER_ERRORS as err:
        raise _fail(err) from None
    text = json.dumps(figures, indent=1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    logger.info("%s", describe(figures))


@app.command("lora-study")
def lora_study(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """Stage 2 as a LoRA adapter beside full stage 2 (outside the main job): reports/lora/table.md."""
    p = _load(params, overrides)
    from humo.evaluation import lora_study as study

    try:
        study.run(p.evaluate, p.generate, p.limits, p.encoders, p.train, p.train_stage2, p.model, p.tracking, p.paths)
    except USER_ERRORS as err:
        raise _fail(err) from None


@app.command()
def ablation(params: ParamsOption = DEFAULT_PARAMS_PATH, overrides: Overrides = None) -> None:
    """The paper's ablation in miniature (outside the main job): 4 trained recipes x 3 seeds, TA, guidance A/B."""
    p = _load(params, overrides)
    from humo.evaluation import ablation as ablation_module

    try:
        ablation_module.run(
            p.evaluate, p.generate, p.limits, p.encoders, p.train, p.train_stage1, p.train_stage2, p.model,
            p.tracking, p.paths,
        )
    except USER_ERRORS as err:
        raise _fail(err) from None
