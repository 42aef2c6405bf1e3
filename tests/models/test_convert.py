"""Checkpoint loading and the diffusers key map: parity with diffusers' Wan, released key layouts, strict errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import save_file

import humo.models.transformer as transformer_module
from humo.models.convert import (
    NEW_MODULE_PREFIXES,
    _describe_layout,
    diffusers_to_humo_state_dict,
    humo_to_diffusers_state_dict,
    load_humo_checkpoint,
)
from humo.models.presets import HumoDiTConfig, get_preset
from humo.models.testing import upstream_layout, upstream_layout_config as layout_config
from humo.models.transformer import HumoTransformer3D

PARITY_TOLERANCE = 1e-5
"""Issue 4: max abs difference to diffusers' WanTransformer3DModel in float32 (torch 2.13, diffusers 0.42.1)."""
HEADS, HEAD_DIM, FFN, LAYERS, TEXT_DIM, TEXT_LEN = 2, 24, 64, 2, 32, 7


# ---------------------------------------------------------------------------------------------------------------------
# parity with diffusers' WanTransformer3DModel
# ---------------------------------------------------------------------------------------------------------------------


def tiny_wan() -> WanTransformer3DModel:
    """A random Wan2.1 T2V transformer (diffusers default init: nothing zero), norms perturbed away from 1."""
    torch.manual_seed(0)
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=FFN,
        num_layers=LAYERS,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    )
    with torch.no_grad():
        for name, param in wan.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return wan.eval()


def matching_config() -> HumoDiTConfig:
    return get_preset(
        "humo-1.7b",
        dim=HEADS * HEAD_DIM,
        num_heads=HEADS,
        ffn_dim=FFN,
        num_layers=LAYERS,
        text_dim=TEXT_DIM,
        text_len=TEXT_LEN,
        audio_channels=4,
        audio_inner_dim=8,
        audio_context_dim=12,
    )


def parity_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 16, 3, 8, 6, generator=generator)
    text = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=generator)
    return latents, torch.tensor([999.0, 487.0]), text


def test_matches_diffusers_wan_with_audio_silent_and_no_reference() -> None:
    wan = tiny_wan()
    ours = HumoTransformer3D.from_preset(matching_config()).eval()
    missing, unexpected = ours.load_state_dict(diffusers_to_humo_state_dict(wan.state_dict()), strict=False)
    assert not unexpected
    assert all(key.startswith(NEW_MODULE_PREFIXES) or "audio_cross_attn_wrapper." in key for key in missing)
    latents, timestep, text = parity_inputs()
    audio = torch.randn(2, 3, 8, 5, 4)  # real audio: the zero-initialised audio output keeps it silent
    with torch.no_grad():
        theirs = wan(latents, timestep, text).sample
        mine = ours(latents, timestep, text, audio).sample
    assert theirs.abs().max() > 0.5  # a non-trivial output
    assert (mine - theirs).abs().max() < PARITY_TOLERANCE


def test_only_the_float64_timestep_sinusoid_differs_from_diffusers(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers forms the sinusoid in float32; with theirs substituted, the rest of the network agrees to 1e-6."""
    wan = tiny_wan()
    ours = HumoTransformer3D.from_preset(matching_config()).eval()
    ours.load_state_dict(diffusers_to_humo_state_dict(wan.state_dict()), strict=False)
    monkeypatch.setattr(
        transformer_module,
        "sinusoidal_embedding",
        lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0),
    )
    latents, timestep, text = parity_inputs()
    with torch.no_grad():
        difference = (ours(latents, timestep, text).sample - wan(latents, timestep, text).sample).abs().max()
    assert difference < 1e-6


def test_plain_diffusers_wan_folder_loads_and_reproduces_wan(tmp_path) -> None:
    """Stage 1 starts from plain Wan weights: the new modules start at init and the output is Wan's."""
    wan = tiny_wan()
    wan.save_pretrained(tmp_path / "transformer")
    ours = load_humo_checkpoint(tmp_path / "transformer", matching_config(), allow_missing=NEW_MODULE_PREFIXES)
    latents, timestep, text = parity_inputs()
    with torch.no_grad():
        difference = (ours(latents, timestep, text).sample - wan(latents, timestep, text).sample).abs().max()
    assert difference < PARITY_TOLERANCE
    with pytest.raises(ValueError, match="audio_proj.audio_proj_glob_1.layer.bias.*NEW_MODULE_PREFIXES"):
        load_humo_checkpoint(tmp_path / "transformer", matching_config())


def test_key_map_round_trip_and_clip_branch_rejected() -> None:
    wan_state = tiny_wan().state_dict()
    ours = diffusers_to_humo_state_dict(wan_state)
    assert humo_to_diffusers_state_dict(ours).keys() == wan_state.keys()
    full = HumoTransformer3D.from_preset(matching_config()).state_dict()
    assert humo_to_diffusers_state_dict(full).keys() == wan_state.keys()  # audio + mask modules dropped
    clip = dict(wan_state, **{"condition_embedder.image_embedder.ff.net.0.proj.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="image_embedder"):
        diffusers_to_humo_state_dict(clip)


# ---------------------------------------------------------------------------------------------------------------------
# released key layouts (humo-reference.md 1.7), written out here independently of the model code
# ---------------------------------------------------------------------------------------------------------------------

def fake_state(in_dim: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(in_dim)
    return {key: torch.randn(shape, generator=generator) for key, shape in upstream_layout(in_dim).items()}


def write_sharded(state: dict[str, torch.Tensor], folder, shards: int = 3) -> None:
    """The HuMo-17B layout: ``humo-0000k-of-0000n.safetensors`` plus ``humo.safetensors.index.json``."""
    folder.mkdir()
    keys = sorted(state)
    weight_map = {}
    for index in range(shards):
        name = f"humo-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[index::shards]
        save_file({key: state[key] for key in part}, str(folder / name))
        weight_map.update({key: name for key in part})
    (folder / "humo.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(
    ("preset", "in_dim", "form"), [("humo-1.7b", 16, "pth"), ("humo-17b", 36, "sharded"), ("humo-1.7b", 16, "nested")]
)
def test_released_layout_loads_strictly(tmp_path, preset: str, in_dim: int, form: str) -> None:
    state = fake_state(in_dim)
    if form == "sharded":
        write_sharded(state, tmp_path / "HuMo-17B")
        path = tmp_path / "HuMo-17B"
    else:
        path = tmp_path / "ema.pth"
        torch.save({"module": state} if form == "nested" else state, path)
    model = load_humo_checkpoint(path, layout_config(preset))
    ours = model.state_dict()
    # Our names ARE upstream's: the only parameters not in a released file are the mask predictor's.
    assert {key for key in ours if not key.startswith("mask_predictor.")} == set(state)
    assert all(torch.equal(ours[key], value) for key, value in state.items())
    assert all(torch.isfinite(value).all() for key, value in ours.items() if key.startswith("mask_predictor."))


def test_loading_casts_to_the_requested_dtype(tmp_path) -> None:
    torch.save(fake_state(16), tmp_path / "ema.pth")
    model = load_humo_checkpoint(tmp_path / "ema.pth", layout_config("humo-1.7b"), dtype=torch.bfloat16)
    assert {param.dtype for param in model.parameters()} == {torch.bfloat16}  # mask predictor included


def test_missing_keys_fail_with_their_names(tmp_path) -> None:
    state = fake_state(16)
    del state["blocks.1.self_attn.k.weight"], state["head.modulation"]
    torch.save(state, tmp_path / "ema.pth")
    with pytest.raises(ValueError, match=r"lacks 2 parameter.*blocks\.1\.self_attn\.k\.weight, head\.modulation"):
        load_humo_checkpoint(tmp_path / "ema.pth", layout_config("humo-1.7b"))


def test_unused_tensors_are_listed_in_a_warning(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    state = dict(fake_state(16), **{"extra.face_head.weight": torch.zeros(3), "extra.other": torch.zeros(1)})
    torch.save(state, tmp_path / "ema.pth")
    with caplog.at_level(logging.WARNING, logger="humo.models.convert"):
        load_humo_checkpoint(tmp_path / "ema.pth", layout_config("humo-1.7b"))
    assert "2 tensor(s) the model does not use" in caplog.text
    assert "extra.face_head.weight, extra.other" in caplog.text


def test_checkpoint_of_another_preset_fails_naming_key_and_shapes(tmp_path) -> None:
    write_sharded(fake_state(36), tmp_path / "HuMo-17B")
    expected = r"patch_embedding\.weight: model \[24, 16, 1, 2, 2\] vs file \[24, 36, 1, 2, 2\]"
    with pytest.raises(ValueError, match=expected):
        load_humo_checkpoint(tmp_path / "HuMo-17B", layout_config("humo-1.7b"))


def test_bad_paths_fail_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_humo_checkpoint(tmp_path / "nope.pth", "tiny")
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no .*index.json"):
        load_humo_checkpoint(tmp_path, "tiny")


# ---------------------------------------------------------------------------------------------------------------------
# which preset a file looks like (every readable dimension compared)
# ---------------------------------------------------------------------------------------------------------------------


def meta_state(preset: str, **overrides: object) -> dict[str, torch.Tensor]:
    """The state dict of a preset, on the meta device (shapes only, so the 17B layout costs nothing)."""
    with torch.device("meta"):
        return HumoTransformer3D.from_preset(get_preset(preset, **overrides)).state_dict()


def test_real_tiny_state_dict_matches_tiny_with_all_figures() -> None:
    description = _describe_layout(HumoTransformer3D.from_preset(get_preset("tiny")).state_dict())
    assert description == (
        "the file looks like preset 'tiny' (dim 128, in_channels 16, ffn_dim 512, text_dim 384, audio_inner_dim 128, "
        "audio_input_dim 640, audio_context_dim 128, num_layers 4)"  # 640 = window 8 * 1 group * 80 mel bins
    )


@pytest.mark.parametrize("preset", ["humo-1.7b", "humo-17b"])
def test_released_presets_match_themselves(preset: str) -> None:
    assert _describe_layout(meta_state(preset)).startswith(f"the file looks like preset {preset!r} (")


def test_one_differing_width_is_no_preset_and_is_named() -> None:
    description = _describe_layout(meta_state("humo-1.7b", text_dim=384))  # 1.7B widths, the tiny text encoder
    assert "looks like" not in description
    assert description.startswith("the file has dim 1536, in_channels 16, ffn_dim 8960, text_dim 384, ")
    assert description.endswith("no known preset matches; closest 'humo-1.7b' differs in text_dim 384 vs 4096")


def test_several_differences_are_all_listed() -> None:
    description = _describe_layout(meta_state("humo-17b", num_layers=2, audio_channels=80, audio_groups=1))
    assert description.endswith(
        "closest 'humo-17b' differs in audio_input_dim 640 vs 51200, num_layers 2 vs 40"
    )  # 51200 = window 8 * 5 Whisper groups * 1280


def test_partial_state_compares_only_what_it_has() -> None:
    state = meta_state("humo-17b")
    patch_only = {"patch_embedding.weight": state["patch_embedding.weight"]}
    assert _describe_layout(patch_only) == (
        "the file looks like preset 'humo-17b' (dim 5120, in_channels 36; could not read ffn_dim, text_dim, "
        "audio_inner_dim, audio_input_dim, audio_context_dim, num_layers)"
    )
    text_only = {"text_embedding.0.weight": state["text_embedding.0.weight"], "head.head.bias": torch.zeros(64)}
    assert _describe_layout(text_only).startswith("the file looks like preset 'humo-1.7b' or 'humo-17b' (text_dim")
    no_audio = {key: value for key, value in meta_state("tiny").items() if not key.startswith("audio_proj.")}
    assert _describe_layout(no_audio).endswith(
        "num_layers 4; could not read audio_inner_dim, audio_input_dim, audio_context_dim)"
    )
    assert "none of the tensors" in _describe_layout({"head.head.bias": torch.zeros(64)})


def test_loader_error_says_which_preset_the_file_is(tmp_path) -> None:
    torch.save(HumoTransformer3D.from_preset(get_preset("tiny")).state_dict(), tmp_path / "ema.pth")
    with pytest.raises(ValueError, match=r"lacks .* the file looks like preset 'tiny' \(dim 128,"):
        load_humo_checkpoint(tmp_path / "ema.pth", "humo-1.7b")
