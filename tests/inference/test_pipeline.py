"""HumoPipeline: upstream sampler schedule, length rule, null conditions, batched+cached == naive, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from humo.diffusion.flow_matching import sampling_sigmas, sigmas_to_timesteps
from humo.diffusion.guidance import Branch, build_guidance
from humo.inference.pipeline import NUM_REF_FRAMES, frames_for_audio, make_scheduler

SIZE, STEPS = 32, 3
G17 = build_guidance("humo-17b", "TIA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------------
# schedule and length
# ---------------------------------------------------------------------------------------------------------------------


def test_unipc_is_configured_as_upstream() -> None:
    scheduler = make_scheduler("unipc", 5.0, 50)
    assert scheduler.timesteps[:6].tolist() == [999, 995, 991, 987, 982, 978]
    assert int((scheduler.timesteps > 980).sum()) == 5
    assert torch.equal(scheduler.timesteps, sigmas_to_timesteps(sampling_sigmas(50, 5.0))[:-1])
    assert torch.allclose(scheduler.sigmas.double(), sampling_sigmas(50, 5.0), atol=1e-6)
    assert scheduler.config.solver_order == 2 and scheduler.config.solver_type == "bh2"
    euler = make_scheduler("euler", 5.0, 50)
    assert torch.allclose(euler.sigmas.double(), sampling_sigmas(50, 5.0), atol=1e-6)
    with pytest.raises(ValueError, match="unknown solver"):
        make_scheduler("ddim", 5.0, 10)  # type: ignore[arg-type]


def test_frames_follow_upstreams_audio_rule() -> None:
    assert frames_for_audio(36_176, 97) == 53  # 2.26 s -> 56 whole frames -> 4k+1 = 53
    assert frames_for_audio(640 * 97, 97) == 97
    assert frames_for_audio(640 * 100, 97) == 97  # capped
    assert frames_for_audio(640 * 4, 97) == 1
    with pytest.raises(ValueError, match="shorter than one video frame"):
        frames_for_audio(639, 97)


# ---------------------------------------------------------------------------------------------------------------------
# conditions
# ---------------------------------------------------------------------------------------------------------------------


def test_null_conditions_of_each_branch(pipeline, speech, portrait) -> None:
    prompt, negative = pipeline.encode_prompt("a man talks")
    assert not torch.equal(prompt, negative)  # the null text is the negative prompt, not an empty string
    ref = pipeline.encode_reference(portrait, SIZE, SIZE)
    assert ref.shape == (1, 16, 1, SIZE // 8, SIZE // 8)
    audio = pipeline.encode_audio(speech, 9)
    assert audio.shape == (1, 3, 8, 1, 80) and audio.abs().sum() > 0
    inputs = pipeline.prepare_branch_inputs(G17.chain, prompt, negative, audio, ref, SIZE, SIZE)
    for k, branch in enumerate(inputs.branches):
        assert torch.equal(inputs.text[k], (prompt if branch.text else negative)[0])
        assert torch.equal(inputs.ref_slot[k], ref[0] if branch.image else torch.zeros_like(ref[0]))
        assert (inputs.audio[k].abs().sum() > 0) == branch.audio
        assert inputs.audio[k, -NUM_REF_FRAMES:].abs().sum() == 0  # the reference frame has zero audio rows


def test_channel_mode_null_image_is_the_cached_zero_video_latent(channel_pipeline, portrait) -> None:
    pipe = channel_pipeline
    height, width = 48, 80  # neither 480p nor 720p: any multiple of 16 works
    prompt, negative = pipe.encode_prompt("a man talks")
    ref = pipe.encode_reference(portrait, height, width)
    audio = pipe.encode_audio(None, 9)
    chain = (Branch.parse("TI"), Branch.parse("∅"))
    inputs = pipe.prepare_branch_inputs(chain, prompt, negative, audio, ref, height, width)
    zero = pipe.zero_video_latent(4, height, width)
    assert inputs.ref_slot is None and inputs.condition.shape == (2, 20, 4, height // 8, width // 8)
    mask, latent = inputs.condition[:, :4], inputs.condition[:, 4:]
    assert mask[:, :, :3].abs().sum() == 0 and torch.all(mask[:, :, 3:] == 1)  # mask kept in both branches
    assert torch.equal(latent[0, :, :3], zero[0, :, :3]) and torch.equal(latent[0, :, 3:], ref[0])
    assert torch.equal(latent[1], zero[0])  # null image: the zero-video latent everywhere
    # computed once per size, then sliced from the cache (causal VAE: a prefix encodes to a prefix)
    cached = pipe._zero_latents[(height, width)]
    assert pipe.zero_video_latent(2, height, width).data_ptr() == cached.data_ptr()
    fresh = pipe.vae.encode(torch.zeros(1, 3, 5, height, width))
    assert torch.allclose(fresh, zero[:, :, :2], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# batched + cached == naive
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pipeline", "channel_pipeline"])
@pytest.mark.parametrize("form", ["humo-17b", "humo-1.7b"])
def test_batched_cached_equals_naive(which, form, request, speech, portrait) -> None:
    pipe = request.getfixturevalue(which)
    guidance = build_guidance(form, "TIA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    kwargs = dict(image=portrait, audio=speech, height=SIZE, width=SIZE, num_frames=9, num_inference_steps=STEPS,
                  guidance=guidance, output_type="latent", progress=False)
    fast = pipe("a man talks", generator=seeded(), batched=True, **kwargs)
    slow = pipe("a man talks", generator=seeded(), batched=False, **kwargs)
    assert fast.frames.shape == (16, 3, SIZE // 8, SIZE // 8)
    assert fast.frames.abs().max() > 0.1  # a real result, not zeros
    assert (fast.frames - slow.frames).abs().max().item() < 1e-4


@pytest.mark.parametrize("size", [1, 2])
def test_fewer_branches_per_forward_give_the_same_latents(channel_pipeline, size, speech, portrait) -> None:
    guidance = build_guidance("humo-1.7b", "TIA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)  # 4 branches
    kwargs = dict(image=portrait, audio=speech, height=SIZE, width=SIZE, num_frames=9, num_inference_steps=STEPS,
                  guidance=guidance, output_type="latent", progress=False)
    together = channel_pipeline("a man talks", generator=seeded(), **kwargs)
    batches: list[int] = []
    forward = channel_pipeline.transformer.forward

    def counted(hidden, *args, **kw):
        batches.append(hidden.shape[0])
        return forward(hidden, *args, **kw)

    channel_pipeline.transformer.forward = counted
    channel_pipeline.max_branch_batch = size
    try:
        apart = channel_pipeline("a man talks", generator=seeded(), **kwargs)
    finally:
        channel_pipeline.max_branch_batch = None
        del channel_pipeline.transformer.forward
    assert max(batches) == size and sum(batches) == 4 * STEPS
    assert (together.frames - apart.frames).abs().max().item() < 1e-5


def test_17b_form_runs_three_branches_per_step_and_context_once(pipeline, speech, portrait) -> None:
    seen: list[int] = []
    contexts: list[bool] = []
    transformer = pipeline.transformer
    forward, prepare = transformer.forward, transformer.prepare_context

    def counting(hidden_states, *args, **kwargs):
        seen.append(hidden_states.shape[0])
        return forward(hidden_states, *args, **kwargs)

    def counting_context(*args, **kwargs):
        contexts.append(kwargs.get("cache_kv", False))
        return prepare(*args, **kwargs)

    transformer.forward, transformer.prepare_context = counting, counting_context
    try:
        pipeline("a man talks", image=portrait, audio=speech, height=SIZE, width=SIZE, num_frames=9,
                 num_inference_steps=STEPS, guidance=G17, output_type="latent", progress=False)
    finally:
        del transformer.forward, transformer.prepare_context
    assert seen == [3] * STEPS  # one forward per step, three branches in it (∅ early, I late are idle)
    assert contexts == [True]  # text/audio context with every block's K/V: once per request, not per step


# ---------------------------------------------------------------------------------------------------------------------
# outputs, seeds, modes
# ---------------------------------------------------------------------------------------------------------------------


def test_seeded_and_modes(pipeline, speech, portrait) -> None:
    common = dict(height=SIZE, width=SIZE, num_inference_steps=2, output_type="latent", progress=False)
    a = pipeline("a man talks", image=portrait, audio=speech, generator=seeded(1), **common)
    b = pipeline("a man talks", image=portrait, audio=speech, generator=seeded(1), **common)
    c = pipeline("a man talks", image=portrait, audio=speech, generator=seeded(2), **common)
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)
    assert a.mode == "TIA" and a.num_frames == 17  # 53 frames from the audio, capped by max_frames=17
    assert any("cut to the maximum" in note for note in a.notes)
    for mode in ("T", "TI", "TA"):
        out = pipeline("a man talks", image=portrait if "I" in mode else None, audio=speech, mode=mode,
                       num_frames=5, generator=seeded(1), **common)
        assert out.mode == mode and out.frames.shape[1] == 2


def test_outputs_np_pt_and_mp4_with_audio(pipeline, speech, portrait, tmp_path) -> None:
    from humo.data.media import read_clip

    common = dict(image=portrait, audio=speech, height=SIZE, width=SIZE, num_frames=9, num_inference_steps=2,
                  progress=False)
    frames = pipeline("a man talks", generator=seeded(), output_type="np", **common).frames
    assert frames.shape == (9, SIZE, SIZE, 3) and frames.dtype == np.uint8
    pt = pipeline("a man talks", generator=seeded(), output_type="pt", **common).frames
    assert pt.shape == (3, 9, SIZE, SIZE) and 0 <= pt.min() and pt.max() <= 1
    out = pipeline("a man talks", generator=seeded(), output_type="mp4", output_path=tmp_path / "v.mp4", **common)
    clip = read_clip(out.path)
    assert clip.frames.shape == (9, SIZE, SIZE, 3) and clip.fps == pytest.approx(25.0)
    assert clip.audio is not None and len(clip.audio) == 9 * 640
    # the muxed audio is the driving audio (AAC is lossy: compare loosely)
    assert np.corrcoef(clip.audio, speech[: 9 * 640])[0, 1] > 0.9
    assert set(out.timings) >= {"encode", "denoise", "decode", "write", "total"}


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(mode="TIA", image=None), "needs a reference image"),
        (dict(mode="TA", audio=None), "needs audio"),
        (dict(height=50), "multiple of 16"),
        (dict(width=100_000), "multiple of 16"),
        (dict(num_frames=10), r"4k\+1"),
        (dict(num_frames=100_001), "exceeds the maximum"),
        (dict(num_inference_steps=0), "positive int"),
        (dict(mode="XA"), "unknown mode"),
        (dict(audio=np.zeros((2, 100), np.float32)), "1-D float"),
        (dict(output_type="gif"), "unknown output_type"),
    ],
)
def test_check_inputs_names_the_problem(pipeline, speech, portrait, kwargs, fragment) -> None:
    args = dict(image=portrait, audio=speech, height=SIZE, width=SIZE, num_inference_steps=2, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        pipeline("a man talks", **args)
    with pytest.raises(ValueError, match="non-empty"):
        pipeline("  ", image=portrait, audio=speech)


def test_euler_solver_option(pipeline, speech) -> None:
    from humo.inference.pipeline import HumoPipeline

    euler = HumoPipeline(pipeline.transformer, pipeline.vae, pipeline.text_encoder, pipeline.audio_encoder,
                         solver="euler", max_frames=9)
    common = dict(audio=speech, mode="TA", height=SIZE, width=SIZE, num_frames=5, num_inference_steps=2,
                  output_type="latent", progress=False)
    a = euler("a man talks", generator=seeded(), **common).frames
    b = pipeline("a man talks", generator=seeded(), **common).frames
    assert a.shape == b.shape and torch.isfinite(a).all() and not torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown solver"):
        HumoPipeline(pipeline.transformer, pipeline.vae, pipeline.text_encoder, pipeline.audio_encoder, solver="ddim")


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_sampler_recovers_the_data_from_an_exact_velocity(solver, pipeline) -> None:
    """With the straight-path velocity ``noise - x0`` (the sign the weights expect) both solvers land on ``x0``."""
    from humo.inference.pipeline import HumoPipeline
    from humo.models.transformer import HumoTransformerOutput

    generator = seeded(3)
    shape = (1, 16, 3 + NUM_REF_FRAMES, 4, 4)
    noise, x0 = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)

    class Oracle(type(pipeline.transformer)):
        def forward(self, hidden_states, timestep, **kwargs):  # type: ignore[override]
            return HumoTransformerOutput(sample=(noise - x0).expand(hidden_states.shape[0], *shape[1:]))

    oracle = Oracle(**pipeline.transformer.config).eval()
    pipe = HumoPipeline(oracle, pipeline.vae, pipeline.text_encoder, pipeline.audio_encoder, solver=solver)
    prompt, negative = pipe.encode_prompt("x")
    inputs = pipe.prepare_branch_inputs(G17.chain, prompt, negative, pipe.encode_audio(None, 9),
                                        torch.zeros(1, 16, 1, 4, 4), SIZE, SIZE)
    final = pipe.denoise(noise, inputs, G17, 20, progress=False)  # guidance of equal branches = the velocity
    # upstream starts at sigma = shift(0.999) < 1 from pure noise, so the endpoint is off by (1 - sigma_0)(noise - x0)
    video = slice(0, 3)
    assert (final[:, :, video] - x0[:, :, video]).abs().max().item() < 5e-3
