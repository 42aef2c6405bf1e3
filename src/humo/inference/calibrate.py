"""``humo calibrate-cache``: fit the step cache's signals on our own model (never copied coefficients).

Steps of :func:`calibrate`:

1. generate each calibration request in each mode with the exact sampler (``speed: off``) through
   :func:`humo.inference.generate.generate`, with a recorder on the denoising loop;
2. per branch and step, record the relative L1 change of the branch's prediction against the previous step, and
   the mean over tokens of the ratio of block-residual norms (the two things a skipped step gets wrong);
3. per branch, fit TeaCache's polynomial from the modulation's relative change (a function of the timestep alone,
   :meth:`~humo.models.transformer.HumoTransformer3D.timestep_modulation`) to the prediction change, and average
   the residual-norm ratios per step (MagCache);
4. write the fit as JSON (``generate.cache_calibration``), with each polynomial's ``r2``.

:func:`run` is the DVC stage: requests from training clips of the curated manifest (not the evaluation set).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from humo.config import CalibrateCacheConfig, EncodersConfig, GenerateConfig, PathsConfig, RequestLimitsConfig
from humo.diffusion.step_cache import CacheCalibration, consecutive_changes, fit_branch, relative_l1
from humo.inference.generate import GenerationRequest, build_pipeline, generate, load_model
from humo.inference.pipeline import HumoPipeline

logger = logging.getLogger(__name__)


class ResidualRecorder:
    """Collects, for one run, each branch's prediction change and residual-norm ratio per step."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.prediction_change: dict[str, np.ndarray] = {}
        self.residual_ratio: dict[str, np.ndarray] = {}
        self._last: dict[str, tuple[int, np.ndarray, torch.Tensor]] = {}

    def record(self, step: int, timestep: int, branch: str, velocity: torch.Tensor, residual: torch.Tensor) -> None:
        norms = residual.float().norm(dim=-1)  # [1, S] per-token L2 norm
        current = velocity.float().cpu().numpy()
        for table in (self.prediction_change, self.residual_ratio):
            table.setdefault(branch, np.full(self.num_steps, np.nan))
        last = self._last.get(branch)
        if last is not None and last[0] == step - 1:
            self.prediction_change[branch][step] = relative_l1(current, last[1])
            ratio = norms / last[2].clamp_min(torch.finfo(torch.float32).tiny)
            self.residual_ratio[branch][step] = float(ratio.mean())
        self._last[branch] = (step, current, norms)


def calibrate(
    pipeline: HumoPipeline,
    requests: list[GenerationRequest],
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    model_name: str,
    progress: bool = True,
) -> CacheCalibration:
    """Steps 1-3 of the module docstring over ``requests`` (each at ``settings.steps``, exact sampler).

    Raises:
        ValueError: no request, or a branch with too few recorded steps to fit.
    """
    if not requests:
        raise ValueError("calibrate-cache needs at least one request")
    steps = settings.steps
    recorders = []
    for request in tqdm(requests, desc="calibrate-cache", disable=not progress):
        recorder = ResidualRecorder(steps)
        request = request.model_copy(update={"speed": "off", "steps": steps})
        generate(pipeline, request, settings, limits, output_type="latent", progress=False, recorder=recorder)
        recorders.append(recorder)
    return fit_recorders(pipeline, recorders, model_name, steps, len(requests))


def fit_recorders(
    pipeline: HumoPipeline, recorders: list[ResidualRecorder], model_name: str, steps: int, requests: int
) -> CacheCalibration:
    """Step 3: per branch, the TeaCache polynomial and the MagCache ratios from the recorded exact runs."""
    timesteps = pipeline.model_timesteps(steps)
    modulation = pipeline.transformer.timestep_modulation(torch.tensor(timesteps, dtype=torch.float32))
    change = consecutive_changes(list(modulation.cpu().numpy()))
    branches, fitted = {}, {}
    for name in dict.fromkeys(name for recorder in recorders for name in recorder.prediction_change):
        rows = [r for r in recorders if name in r.prediction_change]
        prediction = np.stack([r.prediction_change[name] for r in rows])
        ratio = np.stack([r.residual_ratio[name] for r in rows])
        branches[name], r2 = fit_branch(timesteps, change, prediction, ratio)
        if np.isfinite(r2):  # a branch never active two steps in a row has no fit (and never reuses)
            fitted[name] = r2
        logger.info("branch %s: %d samples, teacache fit r2 %.3f", name, branches[name].samples, r2)
    return CacheCalibration(
        model=model_name, steps=steps, shift=pipeline.shift, branches=branches, requests=requests, fitted=fitted,
    )


def manifest_requests(cfg: CalibrateCacheConfig, paths: PathsConfig, settings: GenerateConfig) -> list[GenerationRequest]:
    """``cfg.num_clips`` training clips of the curated manifest, in every mode of ``cfg.modes``."""
    import pandas as pd
    from PIL import Image

    from humo.data.media import read_clip

    manifest = pd.read_parquet(paths.manifest)
    train = manifest[manifest["split"] == "train"]
    if train.empty:
        raise ValueError(f"{paths.manifest} has no training clip to calibrate on")
    rows = train.iloc[np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.num_clips]]
    requests = []
    for number, (_, row) in enumerate(rows.iterrows()):
        clip = read_clip(row["video"])
        image = np.array(Image.open(row["reference_image"]).convert("RGB"))
        for mode in cfg.modes:
            requests.append(GenerationRequest(
                id=f"calibrate_{number}_{mode}", prompt=str(row["caption"]), mode=mode,
                image=image if "I" in mode else None, audio=clip.audio if "A" in mode else None,
                seed=cfg.seed + number, num_frames=int(row["num_frames"]),
                height=settings.height, width=settings.width,
            ))
    return requests


def requests_from_file(path: Path, limits: RequestLimitsConfig) -> list[GenerationRequest]:
    """The requests of a batch file (paths relative to it); a bad entry is logged and left out.

    Raises:
        ValueError: no entry of the file could be read.
    """
    from humo.inference.batch import load_request, read_requests
    from humo.inference.generate import InvalidRequestError

    loaded = []
    for raw in read_requests(path):
        try:
            loaded.append(load_request(raw, Path(path).parent, limits, None))
        except InvalidRequestError as err:
            logger.warning("calibrate-cache: request %s left out: %s", raw.id, err)
    if not loaded:
        raise ValueError(f"no request of {path} could be read; see the warnings above")
    return loaded


def run(
    cfg: CalibrateCacheConfig,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    encoders: EncodersConfig,
    paths: PathsConfig,
    model: str | Path | None = None,
    requests: list[GenerationRequest] | None = None,
) -> Path:
    """The ``calibrate_cache`` stage: fit on ``requests`` (default: :func:`manifest_requests`), write the file.

    Returns:
        The calibration file (``settings.cache_calibration``).
    """
    transformer, info = load_model(model or paths.candidate_dir)
    pipeline = build_pipeline(transformer, settings, encoders, paths.vae_dir, limits)
    requests = requests if requests is not None else manifest_requests(cfg, paths, settings)
    fit = calibrate(pipeline, requests, settings, limits, f"{info.name}@{info.version}", settings.progress_bar)
    path = fit.save(Path(settings.cache_calibration))
    logger.info("step-cache calibration of %s on %d requests -> %s", info.name, len(requests), path)
    return path
