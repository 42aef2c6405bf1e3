"""Sampling speed of HumoPipeline, side by side in one run: batched guidance + cached context against the naive form.

What it measures (float32, ``torch.no_grad``):

1. **Seconds per denoising step** of HuMo-17B-style TIA guidance (3 active branches per step, the switch at
   t = 980 crossed) at the ``tiny`` preset, at a mid-size trunk (dim 512, 8 blocks) with the tiny preset's
   context (64 text tokens of 384, 80 mel channels), and at the same trunk with the released models' context
   widths (512 umT5 tokens of 4096, Whisper 5 x 1280; what a real deployment conditions on), for
   - *batched + cached*: ONE forward over the active branches per step, text/audio context (and every block's
     keys/values) prepared once per request (``HumoPipeline.denoise(batched=True)``);
   - *naive*: one forward per branch, context recomputed at every step (``batched=False``), the way upstream runs
     its branches.
   Both start from the same noise; the max abs difference of the final latents is printed (target < 1e-4) and the
   speed-up (target >= 1.5x).
2. **End-to-end seconds per generated second of video** at the tiny preset: encoders (minilm text, log-mel audio),
   reference letterbox + VAE encode, denoising, VAE decode and mp4 writing with the audio muxed, for upstream's
   example request (2.26 s of speech -> 53 frames at 25 fps), with ``generate.steps`` from params.yaml.
3. **Peak memory** of the end-to-end run: on CPU the process's peak resident set size growth (``ru_maxrss``) over
   the run; on CUDA ``torch.cuda.max_memory_allocated``.
4. **Seconds per whole video** at the mid trunk (``generate.steps`` TIA steps): upstream-style sampling (one forward
   per branch, context recomputed), our full batched sampler, and the batched sampler with a speed preset
   (``--speed``, step caching + guidance truncation), timed round robin; with the DiT forwards each made and the
   final latents' difference from the full sampler (target: 4x faster than upstream-style).
Long-video seams are measured by ``benchmarks/bench_long_video.py``.

Usage::

    python benchmarks/bench_inference.py                 # a few minutes on 2 CPU cores
    python benchmarks/bench_inference.py --steps 10 --repeats 1
    python benchmarks/bench_inference.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from humo.config import AudioEncoderConfig, TextEncoderConfig, load_params
from humo.diffusion.guidance import build_guidance
from humo.diffusion.step_cache import CacheCalibration, CachePolicy, StepPlan
from humo.inference.calibrate import ResidualRecorder, fit_recorders
from humo.inference.generate import resolve_guidance
from humo.inference.speed import preset as speed_preset
from humo.inference.speed import truncation_for
from humo.inference.pipeline import NUM_REF_FRAMES, BranchInputs, HumoPipeline
from humo.models.encoders import VideoVAE, build_tiny_vae, load_audio_encoder, load_text_encoder
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D

MID_OVERRIDES: dict[str, object] = {"dim": 512, "num_heads": 8, "ffn_dim": 2048, "num_layers": 8}
RELEASED_CONTEXT: dict[str, object] = {
    "text_dim": 4096, "text_len": 512, "audio_groups": 5, "audio_channels": 1280, "audio_inner_dim": 512,
    "audio_context_dim": 1536,
}
"""The conditioning widths of the released models (umT5-XXL: 512 tokens of 4096; Whisper: 5 groups of 1280;
humo-reference.md section 1.1) instead of the tiny preset's offline encoders (64 MiniLM tokens of 384, 80 mel)."""
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
KIB = 1024
DEFAULT_SPEED = "config"
"""The speed of the whole-video rows: the configured default, which the speed study chose (README, "Fewer
forwards")."""


def step_benchmark(name: str, overrides: dict[str, object], args, text_encoder, audio_encoder, vae) -> dict:
    """Seconds per denoising step, batched+cached vs naive, on random conditions of the model's shapes."""
    model = randomize_(HumoTransformer3D.from_preset("tiny", **overrides)).to(args.device)
    cfg = model.humo_config
    if cfg.text_dim != text_encoder.dim:  # released widths: the loop only sees encoder outputs, made up below
        text_encoder = SimpleNamespace(dim=cfg.text_dim, max_length=cfg.text_len, negative_prompt="")
        audio_encoder = SimpleNamespace(groups=cfg.audio_groups, channels=cfg.audio_channels)
    pipe = HumoPipeline(model, vae, text_encoder, audio_encoder, max_frames=args.frames)
    guidance = build_guidance("humo-17b", "TIA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    num_latent = (args.frames - 1) // 4 + 1
    h = w = args.size // 8
    g = torch.Generator().manual_seed(0)
    branches = guidance.chain
    text = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    negative = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    audio = torch.randn(1, num_latent + NUM_REF_FRAMES, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=g)
    audio[:, -NUM_REF_FRAMES:] = 0
    ref = torch.randn(1, 16, NUM_REF_FRAMES, h, w, generator=g)
    inputs = BranchInputs(
        branches=branches,
        text=torch.cat([text if b.text else negative for b in branches]).to(args.device),
        audio=torch.cat([audio if b.audio else torch.zeros_like(audio) for b in branches]).to(args.device),
        ref_slot=torch.cat([ref if b.image else torch.zeros_like(ref) for b in branches]).to(args.device),
        condition=None,
    )
    noise = torch.randn(1, 16, num_latent + NUM_REF_FRAMES, h, w, generator=g).to(args.device)
    # Interleave the two forms so that load from other processes on a shared machine hits both alike.
    times: dict[str, list[float]] = {"batched": [], "naive": []}
    finals: dict[str, torch.Tensor] = {}
    for mode in times:
        pipe.denoise(noise, inputs, guidance, 2, batched=mode == "batched", progress=False)  # warm-up
    for _ in range(args.repeats):
        for mode in times:
            _sync(args.device)
            tick = time.perf_counter()
            finals[mode] = pipe.denoise(noise, inputs, guidance, args.steps, batched=mode == "batched", progress=False)
            _sync(args.device)
            times[mode].append((time.perf_counter() - tick) / args.steps)
    results = {mode: (statistics.median(values), finals[mode]) for mode, values in times.items()}
    diff = (results["batched"][1] - results["naive"][1]).abs().max().item()
    tokens = (num_latent + NUM_REF_FRAMES) * (h // 2) * (w // 2)
    return {
        "preset": name,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "tokens": tokens,
        "branches_per_step": 3,
        "s_per_step_batched": round(results["batched"][0], 5),
        "s_per_step_naive": round(results["naive"][0], 5),
        "speedup": round(results["naive"][0] / results["batched"][0], 2),
        "max_abs_diff": diff,
    }


def _default_plan(params, guidance, steps: int, preset, mid_pipe, inputs, noise) -> tuple[StepPlan, str]:
    """The skip plan of ``preset``, made on the trained model with its calibration (artifacts/train_stage2 and
    ``generate.cache_calibration``): what a user of the default runs. A random stand-in's own plan says nothing (its
    prediction jumps between steps), so only without those files is the stand-in fitted and planned itself."""
    from humo.inference.generate import load_model

    settings = params.generate
    trained = Path(params.paths.candidate_dir)
    calibration_path = Path(settings.cache_calibration)
    if preset.cache.enabled and trained.is_dir() and calibration_path.is_file():
        model, info = load_model(trained)
        calibration, source = CacheCalibration.load(calibration_path), f"trained {info.name}@{info.version}"
        planner = HumoPipeline(model, None, SimpleNamespace(dim=model.humo_config.text_dim),
                               SimpleNamespace(groups=model.humo_config.audio_groups,
                                               channels=model.humo_config.audio_channels), shift=settings.shift)
    else:
        recorder = ResidualRecorder(steps)
        mid_pipe.denoise(noise, inputs, guidance, steps, progress=False, recorder=recorder)
        calibration = fit_recorders(mid_pipe, [recorder], "random mid model", steps, 1)
        planner, source = mid_pipe, "the random stand-in (no trained model or calibration found)"
    policy = None
    if preset.cache.enabled:
        policy = CachePolicy(preset.cache.criterion, preset.cache.threshold, calibration, preset.cache.max_skips,
                             preset.cache.retain_fraction)
    return planner.step_plan(guidance, steps, policy), source


def video_benchmark(args, text_encoder, audio_encoder, vae) -> dict:
    """Seconds per whole video at the mid configuration: upstream-style sampling (one forward per branch, context
    recomputed), our full batched sampler, and the batched sampler with a speed preset (cache + truncation)."""
    params = load_params(args.params)
    settings = params.generate
    steps = args.video_steps or settings.steps
    model = randomize_(HumoTransformer3D.from_preset("tiny", **MID_OVERRIDES)).to(args.device)
    cfg = model.humo_config
    pipe = HumoPipeline(model, vae, text_encoder, audio_encoder, solver=settings.solver, shift=settings.shift,
                        max_frames=args.frames)
    guidance, _ = resolve_guidance(settings.guidance, "TIA", cfg)
    g = torch.Generator().manual_seed(1)
    num_latent, h = (args.frames - 1) // 4 + 1, args.size // 8
    audio = torch.randn(1, num_latent, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=g)
    inputs = pipe.prepare_branch_inputs(
        guidance.chain, torch.randn(1, cfg.text_len, cfg.text_dim, generator=g),
        torch.randn(1, cfg.text_len, cfg.text_dim, generator=g), audio,
        torch.randn(1, 16, NUM_REF_FRAMES, h, h, generator=g), args.size, args.size,
    )
    noise = torch.randn(1, 16, num_latent + NUM_REF_FRAMES, h, h, generator=g).to(args.device)
    preset = speed_preset(settings, args.speed)
    fast_guidance = guidance.with_truncation(truncation_for(preset.truncate, steps, settings.shift))
    plan, source = _default_plan(params, fast_guidance, steps, preset, pipe, inputs, noise)
    forms = {
        "upstream-style": dict(guidance=guidance, batched=False, num_inference_steps=steps),
        "full": dict(guidance=guidance, num_inference_steps=steps),
        f"speed {args.speed}": dict(guidance=fast_guidance, plan=plan, num_inference_steps=steps),
    }
    if args.fewer_steps:  # the same speed choice at fewer steps: the two levers together
        fewer_guidance = guidance.with_truncation(truncation_for(preset.truncate, args.fewer_steps, settings.shift))
        fewer_plan, _ = _default_plan(params, fewer_guidance, args.fewer_steps, preset, pipe, inputs, noise)
        forms[f"speed {args.speed}, {args.fewer_steps} steps"] = dict(
            guidance=fewer_guidance, plan=fewer_plan, num_inference_steps=args.fewer_steps
        )
    times: dict[str, list[float]] = {name: [] for name in forms}
    forwards, finals = {}, {}
    for _ in range(args.video_repeats):
        for name, kwargs in forms.items():  # round robin: a slow stretch of the machine hits every form
            before = pipe.dit_forwards
            _sync(args.device)
            tick = time.perf_counter()
            finals[name] = pipe.denoise(noise, inputs, progress=False, **kwargs)
            _sync(args.device)
            times[name].append(time.perf_counter() - tick)
            forwards[name] = pipe.dit_forwards - before
    upstream = statistics.median(times["upstream-style"])
    scale = finals["full"].abs().max().item()
    return {
        "preset": "mid (dim 512, 8 blocks)", "steps": steps, "frames": args.frames, "plan_from": source,
        "rows": [
            {
                "sampler": name, "dit_forwards": forwards[name], "s_per_video": round(statistics.median(times[name]), 2),
                "speedup_vs_upstream": round(upstream / statistics.median(times[name]), 2),
                "rel_diff_vs_full": round((finals[name] - finals["full"]).abs().max().item() / scale, 5),
            }
            for name in forms
        ],
    }


def end_to_end(args, text_encoder, audio_encoder, vae) -> dict:
    """Seconds per generated second of video for upstream's example request at the tiny preset."""
    from PIL import Image

    from humo.data.media import read_audio

    params = load_params(args.params)
    settings = params.generate
    steps = args.e2e_steps or settings.steps
    model = randomize_(HumoTransformer3D.from_preset("tiny")).to(args.device)
    pipe = HumoPipeline(model, vae, text_encoder, audio_encoder, solver=settings.solver, shift=settings.shift,
                        max_frames=settings.max_frames)
    pipe.set_progress_bar_config(disable=True)
    speech = read_audio(REAL_DATA / "humo_audio1.wav")
    image = np.asarray(Image.open(REAL_DATA / "humo_man_Jaime.png").convert("RGB"))
    guidance, _ = resolve_guidance(settings.guidance, "TIA", pipe.transformer.humo_config)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as folder:
        tick = time.perf_counter()
        out = pipe("A person talks.", image=image, audio=speech, height=settings.height, width=settings.width,
                   num_inference_steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(0),
                   output_type="mp4", output_path=Path(folder) / "e2e.mp4", progress=False)
        total = time.perf_counter() - tick
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds_of_video = out.num_frames / 25
    peak = (
        torch.cuda.max_memory_allocated() / KIB**2 if args.device.startswith("cuda") else (rss_after - rss_before) / KIB
    )
    return {
        "preset": "tiny",
        "size": f"{settings.height}x{settings.width}",
        "frames": out.num_frames,
        "steps": steps,
        "solver": settings.solver,
        "seconds": round(total, 2),
        "seconds_of_video": seconds_of_video,
        "s_per_video_second": round(total / seconds_of_video, 2),
        "phases_s": {k: round(v, 3) for k, v in out.timings.items()},
        "peak_memory_MiB": round(peak, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if args.device.startswith("cuda") else "RSS growth (ru_maxrss)",
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per timed run (the switch is crossed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (interleaved); the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--frames", type=int, default=33, help="video frames of the step benchmark (4k+1)")
    parser.add_argument("--size", type=int, default=64, help="height = width in pixels of the step benchmark")
    parser.add_argument("--e2e-steps", type=int, default=None, help="steps of the end-to-end run (default params)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--speed", default=DEFAULT_SPEED, help="speed preset of the whole-video rows")
    parser.add_argument("--video-steps", type=int, default=None, help="steps of the whole-video rows (default params)")
    parser.add_argument("--video-repeats", type=int, default=1, help="timed whole videos per sampler (round robin)")
    parser.add_argument("--fewer-steps", type=int, default=25, help="one more whole-video row: the speed at this many steps (0: none)")
    parser.add_argument("--skip-video", action="store_true", help="leave out the whole-video rows (minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    text_encoder = load_text_encoder(TextEncoderConfig())
    audio_encoder = load_audio_encoder(AudioEncoderConfig())
    vae = VideoVAE(build_tiny_vae(16)).to(args.device)  # untrained, train_vae's default width: same cost
    e2e = end_to_end(args, text_encoder, audio_encoder, vae)  # first: its peak RSS growth is over the bare process
    steps = [
        step_benchmark("tiny", {}, args, text_encoder, audio_encoder, vae),
        step_benchmark("mid (dim 512, 8 blocks)", MID_OVERRIDES, args, text_encoder, audio_encoder, vae),
        step_benchmark("mid + released context", {**MID_OVERRIDES, **RELEASED_CONTEXT}, args, text_encoder,
                       audio_encoder, vae),
    ]
    video = None if args.skip_video else video_benchmark(args, text_encoder, audio_encoder, vae)
    report = {"device": args.device, "threads": torch.get_num_threads(), "step": steps, "end_to_end": e2e,
              "video": video}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"device {args.device}, torch threads {report['threads']}, {args.frames} frames at {args.size}x{args.size}, "
          f"TIA 17B guidance (3 branches/step), {args.steps} steps, median of {args.repeats} interleaved runs")
    header = f"{'preset':<28}{'params M':>9}{'tokens':>8}{'batched s/step':>16}{'naive s/step':>14}{'speed-up':>10}{'max|diff|':>11}"
    print(header)
    for row in steps:
        print(f"{row['preset']:<28}{row['params_M']:>9}{row['tokens']:>8}{row['s_per_step_batched']:>16.4f}"
              f"{row['s_per_step_naive']:>14.4f}{row['speedup']:>9.2f}x{row['max_abs_diff']:>11.1e}")
    print(f"end to end (tiny, {e2e['size']}, {e2e['frames']} frames = {e2e['seconds_of_video']:.2f} s of video, "
          f"{e2e['steps']} {e2e['solver']} steps): {e2e['seconds']:.2f} s -> {e2e['s_per_video_second']:.2f} s per "
          f"second of video; phases {e2e['phases_s']}; peak memory {e2e['peak_memory_MiB']} MiB ({e2e['peak_memory_kind']})")
    if video is not None:
        print(f"whole video, {video['preset']}, {video['frames']} frames, {video['steps']} steps, TIA "
              f"(skip plan from {video['plan_from']})")
        print(f"{'sampler':<28}{'DiT forwards':>14}{'s / video':>11}{'vs upstream':>13}{'rel diff vs full':>18}")
        for row in video["rows"]:
            print(f"{row['sampler']:<28}{row['dit_forwards']:>14}{row['s_per_video']:>11.2f}"
                  f"{row['speedup_vs_upstream']:>12.2f}x{row['rel_diff_vs_full']:>18.4f}")


if __name__ == "__main__":
    main()
