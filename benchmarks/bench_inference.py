"""Sampling speed of HumoPipeline, side by side in one run: batched guidance + cached context against the naive form.

What it measures (float32, ``torch.no_grad``):

1. **Seconds per denoising step** of HuMo-17B-style TIA guidance (3 active branches per step, the switch at
   t = 980 crossed) at the ``tiny`` preset and at a mid-size preset (dim 512, 8 blocks), for
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
4. **Long-video seams**: the example speech generated in windows of 17 frames (5 latent frames, overlap 2), with
   each window conditioned on the previous one and, as the baseline, with independent windows cut together; the
   mean consecutive-frame difference at seams over the one inside windows (about 1 = no jump). With a random model
   both are about 1 and say nothing; pass ``--checkpoint artifacts/train_stage2 --vae artifacts/train_vae/vae`` to
   measure a trained model.

Usage::

    python benchmarks/bench_inference.py                 # a few minutes on 2 CPU cores
    python benchmarks/bench_inference.py --steps 10 --repeats 1
    python benchmarks/bench_inference.py --device cuda
    python benchmarks/bench_inference.py --checkpoint artifacts/train_stage2 --vae artifacts/train_vae/vae
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from humo.config import AudioEncoderConfig, TextEncoderConfig, load_params
from humo.diffusion.guidance import Branch, build_guidance
from humo.inference.batch import guidance_for
from humo.inference.pipeline import NUM_REF_FRAMES, BranchInputs, HumoPipeline
from humo.models.encoders import VideoVAE, build_tiny_vae, load_audio_encoder, load_text_encoder
from humo.models.transformer import HumoTransformer3D

MID_OVERRIDES: dict[str, object] = {"dim": 512, "num_heads": 8, "ffn_dim": 2048, "num_layers": 8}
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
KIB = 1024
SEAM_WINDOW_FRAMES = 17


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial random weights (init zeroes the head and the audio output, which would make every branch equal)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name else noise / math.sqrt(max(param.shape[-1], 1)))
    return model.eval()


def step_benchmark(name: str, overrides: dict[str, object], args, text_encoder, audio_encoder, vae) -> dict:
    """Seconds per denoising step, batched+cached vs naive, on random conditions of the model's shapes."""
    model = randomize_(HumoTransformer3D.from_preset("tiny", **overrides)).to(args.device)
    cfg = model.humo_config
    pipe = HumoPipeline(model, vae, text_encoder, audio_encoder, max_frames=args.frames)
    guidance = build_guidance("humo-17b", "TIA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    num_latent = (args.frames - 1) // 4 + 1
    h = w = args.size // 8
    g = torch.Generator().manual_seed(0)
    branches = guidance.chain
    k = len(branches)
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
    guidance = guidance_for(settings, "TIA")
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


def seams(args, text_encoder, audio_encoder, vae) -> dict:
    """Seam / inside-window frame-difference ratio with and without conditioning on the previous window."""
    from PIL import Image

    from humo.data.media import read_audio
    from humo.inference.long_video import generate_long, seam_statistics

    if args.checkpoint:
        from humo.training.checkpoints import load_trained_transformer

        model = load_trained_transformer(args.checkpoint).to(args.device)
    else:
        model = randomize_(HumoTransformer3D.from_preset("tiny")).to(args.device)
    pipe = HumoPipeline(model, vae, text_encoder, audio_encoder, max_frames=SEAM_WINDOW_FRAMES)
    speech = read_audio(REAL_DATA / "humo_audio1.wav")
    image = np.asarray(Image.open(REAL_DATA / "humo_man_Jaime.png").convert("RGB"))
    row = {"model": args.checkpoint or "random tiny"}
    for conditioned in (True, False):
        out, seam_list = generate_long(
            pipe, "A person talks.", speech, image=image, height=64, width=64, num_inference_steps=args.seam_steps,
            generator=torch.Generator().manual_seed(0), window_frames=SEAM_WINDOW_FRAMES, overlap_latent_frames=2,
            max_total_frames=97, progress=False, condition_on_previous=conditioned,
        )
        stats = seam_statistics(out.frames, seam_list)
        key = "conditioned" if conditioned else "independent"
        row[key] = {"seam": round(stats.seam_mean, 2), "inside": round(stats.inside_mean, 2), "ratio": round(stats.ratio, 2)}
        row["frames"], row["seams"] = out.num_frames, seam_list
    return row


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per timed run (the switch is crossed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (interleaved); the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--frames", type=int, default=33, help="video frames of the step benchmark (4k+1)")
    parser.add_argument("--size", type=int, default=64, help="height = width in pixels of the step benchmark")
    parser.add_argument("--e2e-steps", type=int, default=None, help="steps of the end-to-end run (default params)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", default=None, help="trained checkpoint folder for the seam measurement")
    parser.add_argument("--vae", default=None, help="trained tiny VAE folder (artifacts/train_vae/vae)")
    parser.add_argument("--seam-steps", type=int, default=10, help="steps per window of the seam measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    text_encoder = load_text_encoder(TextEncoderConfig())
    audio_encoder = load_audio_encoder(AudioEncoderConfig())
    if args.vae:
        from humo.config import VaeConfig
        from humo.models.encoders import load_vae

        vae = load_vae(VaeConfig(kind="tiny", path=Path(args.vae)), device=args.device)
    else:
        vae = VideoVAE(build_tiny_vae(16)).to(args.device)  # untrained, train_vae's default width: same cost
    steps = [
        step_benchmark("tiny", {}, args, text_encoder, audio_encoder, vae),
        step_benchmark("mid (dim 512, 8 blocks)", MID_OVERRIDES, args, text_encoder, audio_encoder, vae),
    ]
    e2e = end_to_end(args, text_encoder, audio_encoder, vae)
    seam = seams(args, text_encoder, audio_encoder, vae)
    report = {"device": args.device, "threads": torch.get_num_threads(), "step": steps, "end_to_end": e2e,
              "seams": seam}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"device {args.device}, torch threads {report['threads']}, {args.frames} frames at {args.size}x{args.size}, "
          f"TIA 17B guidance (3 branches/step), {args.steps} steps, median of {args.repeats} interleaved runs")
    header = f"{'preset':<26}{'params M':>9}{'tokens':>8}{'batched s/step':>16}{'naive s/step':>14}{'speed-up':>10}{'max|diff|':>11}"
    print(header)
    for row in steps:
        print(f"{row['preset']:<26}{row['params_M']:>9}{row['tokens']:>8}{row['s_per_step_batched']:>16.4f}"
              f"{row['s_per_step_naive']:>14.4f}{row['speedup']:>9.2f}x{row['max_abs_diff']:>11.1e}")
    print(f"end to end (tiny, {e2e['size']}, {e2e['frames']} frames = {e2e['seconds_of_video']:.2f} s of video, "
          f"{e2e['steps']} {e2e['solver']} steps): {e2e['seconds']:.2f} s -> {e2e['s_per_video_second']:.2f} s per "
          f"second of video; phases {e2e['phases_s']}; peak memory {e2e['peak_memory_MiB']} MiB ({e2e['peak_memory_kind']})")
    print(f"long-video seams ({seam['model']}, {seam['frames']} frames, windows of {SEAM_WINDOW_FRAMES} frames, seams at "
          f"{seam['seams']}): seam/inside ratio conditioned {seam['conditioned']['ratio']} "
          f"({seam['conditioned']}), independent windows {seam['independent']['ratio']} ({seam['independent']})")


if __name__ == "__main__":
    main()
