"""Sequence parallelism on 2 CPU processes (gloo): the same final latents as 1 process, with and without sharding.

One spawned group runs every case; rank 0 computes each case's 1-process reference (the same model with sequence
parallelism switched off) and records the largest difference, which the test then checks.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from humo.config import AudioEncoderConfig, TextEncoderConfig
from humo.inference.parallel import ParallelRankError, ParallelRuntime
from humo.models.parallel import SequenceParallel, even_split, local_parameter_bytes, shard_transformer
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D

WORLD = 2
STEPS = 3
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _transformer(reference_mode: str, seed: int, **overrides: object) -> HumoTransformer3D:
    extra: dict[str, object] = {"num_layers": 2, **overrides}
    if reference_mode == "channel":
        extra.update(reference_mode="channel", in_channels=36)
    return randomize_(HumoTransformer3D.from_preset("tiny", **extra), seed)


def _pipeline(transformer, encoders):
    from humo.inference.pipeline import HumoPipeline

    pipe = HumoPipeline(transformer, *encoders, max_frames=17)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = {
    # name: (reference mode = layout, mode, frames, model overrides, shard_dit, long video)
    "1.7b-layout TA": ("temporal", "TA", 17, {}, False, False),
    "1.7b-layout TIA": ("temporal", "TIA", 17, {}, False, False),
    "17b-layout TA": ("channel", "TA", 17, {}, False, False),
    "17b-layout TIA": ("channel", "TIA", 17, {}, False, False),
    "1.7b-layout TIA sharded": ("temporal", "TIA", 17, {}, True, False),
    "17b-layout TIA sharded": ("channel", "TIA", 17, {}, True, False),
    "3 heads, 5 latent frames (uneven)": ("temporal", "TIA", 13, {"dim": 96, "num_heads": 3}, False, False),
    "long video, 2 windows": ("temporal", "TIA", 29, {}, False, True),
    "17b-layout TA, step cache": ("channel", "TA", 17, {}, False, False),
}
CACHED_CASES = {"17b-layout TA, step cache"}
"""Cases run with a step cache that reuses every branch's residual at the middle step (each rank its own tokens')."""


def _step_cache():
    from humo.diffusion.step_cache import BranchCalibration, CacheCalibration, CachePolicy

    flat = BranchCalibration(poly=(0.0,), timesteps=(999.0, 0.0), log_ratios=(0.0, 0.0))
    calibration = CacheCalibration("flat", STEPS, 5.0, {name: flat for name in ("TA", "T", "∅")})
    return CachePolicy("magcache", 0.1, calibration, max_skips=1, retain_fraction=0.0)


def _run_case(pipe, mode: str, frames: int, long: bool, inputs, cache=None) -> torch.Tensor:
    from humo.inference.long_video import generate_long

    image, audio = inputs
    audio = audio[: frames * 640]
    kwargs = dict(image=image if "I" in mode else None, mode=mode, height=64, width=64, num_inference_steps=STEPS,
                  generator=torch.Generator().manual_seed(7), output_type="latent", progress=False)
    if long:
        output, _ = generate_long(pipe, "a person talks", audio, window_frames=17, overlap_latent_frames=2,
                                  seam_strength=0.0, **kwargs)
    else:
        output = pipe("a person talks", audio=audio, num_frames=frames, cache=cache, **kwargs)
    return output.frames


class _count_all_to_all:
    """Counts the all-to-alls (so a test knows the split really happened)."""

    def __init__(self) -> None:
        self.count, self.original = 0, dist.all_to_all_single

        def counted(*args, **kwargs):
            self.count += 1
            return self.original(*args, **kwargs)

        dist.all_to_all_single = counted

    def undo(self) -> None:
        dist.all_to_all_single = self.original


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from humo.models.encoders import VideoVAE, build_tiny_vae, load_audio_encoder, load_text_encoder

    torch.manual_seed(0)
    encoders = (VideoVAE(build_tiny_vae(8)), load_text_encoder(TextEncoderConfig()),
                load_audio_encoder(AudioEncoderConfig()))
    rng = np.random.default_rng(0)
    inputs = (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (0.1 * rng.standard_normal(29 * 640)).astype(np.float32))
    sequence = SequenceParallel()
    results: dict[str, object] = {}
    for index, (name, (layout, mode, frames, overrides, shard, long)) in enumerate(CASES.items()):
        model = _transformer(layout, seed=index, **overrides)
        cache = _step_cache() if name in CACHED_CASES else None
        reference = _run_case(_pipeline(model, encoders), mode, frames, long, inputs, cache) if rank == 0 else None
        full_bytes = local_parameter_bytes(model)
        model.enable_sequence_parallel(sequence)
        if shard:
            shard_transformer(model, torch.device("cpu"))
        calls = _count_all_to_all()
        parallel = _run_case(_pipeline(model, encoders), mode, frames, long, inputs, cache)
        calls.undo()
        if rank == 0:
            results[name] = {
                "max_abs": float((parallel - reference).abs().max()),
                "scale": float(reference.abs().max()),
                "bytes_ratio": local_parameter_bytes(model) / full_bytes,
                "all_to_alls": calls.count,
            }
    errors = {}
    try:
        _transformer("temporal", 0, dim=64, num_heads=1).enable_sequence_parallel(sequence)
    except ValueError as err:
        errors["heads"] = str(err)
    try:
        sequence.shard(1, 16)
    except ValueError as err:
        errors["frames"] = str(err)
    runtime = ParallelRuntime(rank, WORLD, torch.device("cpu"), sequence)

    def fails_on_rank_1() -> str:
        if rank == 1:
            raise OSError("disk full on rank 1")
        return "done"

    try:
        runtime.run_agreed(fails_on_rank_1)
    except ParallelRankError as err:
        errors["rank"] = str(err)
    errors["after"] = runtime.run_agreed(lambda: "done")  # the group still works for the next request
    if rank == 0:
        Path(out).write_text(json.dumps({"cases": results, "errors": errors}))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sp") / "results.json"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_one_process_latents(parallel_results, case) -> None:
    result = parallel_results["cases"][case]
    assert result["scale"] > 0.1  # the latents are not trivially zero
    assert result["max_abs"] < TOLERANCE, result
    # 4 all-to-alls (q, k, v, out) per block (2) per forward (3 steps, the middle one reused with the step cache;
    # x2 windows for the long video)
    forwards = STEPS - 1 if case in CACHED_CASES else STEPS
    assert result["all_to_alls"] == 4 * 2 * forwards * (2 if CASES[case][5] else 1), result


def test_sharding_halves_the_parameter_bytes_per_process(parallel_results) -> None:
    for case, (_, _, _, _, shard, _) in CASES.items():
        ratio = parallel_results["cases"][case]["bytes_ratio"]
        if shard:
            assert 0.49 < ratio < 0.52, (case, ratio)
        else:
            assert ratio == 1.0, (case, ratio)


def test_impossible_splits_are_refused_with_the_valid_sizes(parallel_results) -> None:
    errors = parallel_results["errors"]
    assert "exceeds the model's 1 attention heads" in errors["heads"] and "1..1" in errors["heads"]
    assert "every process needs a whole frame" in errors["frames"]


def test_a_failure_on_another_rank_fails_the_request_on_rank_0_with_its_reason(parallel_results) -> None:
    errors = parallel_results["errors"]
    assert errors["rank"] == "failed on rank 1: disk full on rank 1"
    assert errors["after"] == "done"


def test_even_split_balances_frames_and_heads() -> None:
    assert even_split(10, 3) == [4, 3, 3]
    assert even_split(12, 5) == [3, 3, 2, 2, 2]
    assert sum(even_split(26, 8)) == 26 and max(even_split(26, 8)) - min(even_split(26, 8)) == 1
