"""Memory levers: fp8 storage (and ComfyUI's scaled-fp8 files), int8 through torchao, block offload, loading in place."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from humo.config import MemoryConfig
from humo.models.checkpoints import load_trained_transformer, save_trained
from humo.models.convert import load_humo_checkpoint
from humo.models.memory import (
    FP8_DTYPE,
    SCALED_FP8_MARKER,
    Fp8Linear,
    apply_memory_levers,
    offload_blocks,
    quantizable_linears,
    scaled_fp8_state_dict,
    store_fp8,
)
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D


def _model(seed: int = 0, **overrides: object) -> HumoTransformer3D:
    return randomize_(HumoTransformer3D.from_preset("tiny", num_layers=2, **overrides), seed)


def _inputs(model: HumoTransformer3D, seed: int = 1) -> dict[str, torch.Tensor]:
    cfg = model.humo_config
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 16, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 8, cfg.text_dim, generator=generator),
        "audio_features": torch.randn(1, 3, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=generator),
        "num_ref_frames": 1,
    }


@torch.no_grad()
def _forward(model: HumoTransformer3D, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).sample


def test_fp8_storage_quantizes_block_linears_only_and_stays_close() -> None:
    model = _model()
    inputs = _inputs(model)
    reference = _forward(model, inputs)
    names = [name for name, _ in quantizable_linears(model)]
    store_fp8(model)
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, Fp8Linear) and layer.weight.dtype == FP8_DTYPE
        assert layer.bias.dtype == torch.float32  # biases keep the compute dtype
    kept = [name for name, value in model.state_dict().items() if value.dtype != FP8_DTYPE]
    assert any("modulation" in name for name in kept) and any(name.startswith("audio_proj.") for name in kept)
    assert any(name.startswith("text_embedding.") for name in kept) and "head.head.weight" in kept
    error = (_forward(model, inputs) - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.1, float(error)  # e4m3 keeps ~2 significant digits; the output moves, but little


def test_scaled_fp8_files_round_trip_in_the_comfyui_layout(tmp_path) -> None:
    model = _model()
    state = scaled_fp8_state_dict(model)
    assert SCALED_FP8_MARKER in state and state["blocks.0.self_attn.q.weight"].dtype == FP8_DTYPE
    assert state["blocks.0.self_attn.q.scale_weight"].dtype == torch.float32
    assert state["blocks.0.norm3.weight"].dtype == torch.float32
    path = tmp_path / "humo_fp8_scaled.safetensors"
    save_file(state, str(path))
    loaded = load_humo_checkpoint(path, model.humo_config)
    weight = loaded.get_submodule("blocks.1.ffn.0").weight
    expected = state["blocks.1.ffn.0.weight"].float() * state["blocks.1.ffn.0.scale_weight"]
    assert torch.equal(weight, expected)  # dequantized exactly as fp8 * scale
    assert torch.equal(loaded.head.head.weight, model.head.head.weight)  # the rest is untouched
    # stored in fp8 again, the loaded model writes the same fp8 bytes
    again = load_file(str(path))
    rewritten = scaled_fp8_state_dict(store_fp8(loaded))
    for key in ("blocks.0.self_attn.q.weight", "blocks.1.ffn.2.weight"):
        assert torch.equal(rewritten[key].view(torch.uint8), again[key].view(torch.uint8)), key


def test_int8_weight_only_through_torchao() -> None:
    pytest.importorskip("torchao")
    model = _model()
    inputs = _inputs(model)
    reference = _forward(model, inputs)
    apply_memory_levers(model, MemoryConfig(weight_storage="int8"), torch.device("cpu"))
    assert type(model.blocks[0].self_attn.q.weight).__name__ != "Parameter"  # a torchao tensor subclass
    error = (_forward(model, inputs) - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05, float(error)


def test_block_offload_moves_blocks_in_turn_and_changes_nothing() -> None:
    model = _model()
    inputs = _inputs(model)
    reference = _forward(model, inputs)
    state = offload_blocks(model, 2, torch.device("cpu"), prefetch=True)
    assert torch.equal(_forward(model, inputs), reference)
    assert state.moves == 2  # each offloaded block was brought in once for the forward
    assert all(param.device.type == "cpu" for param in model.blocks.parameters())


def test_bfloat16_compute_keeps_the_timestep_mlp_in_float32() -> None:
    model = apply_memory_levers(_model(), MemoryConfig(compute_dtype="bfloat16"), torch.device("cpu"))
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert model.time_embedding[0].weight.dtype == torch.float32
    assert model.time_projection[1].weight.dtype == torch.float32


def test_more_offloaded_blocks_than_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="offload_blocks=3 but the model has 2 blocks"):
        apply_memory_levers(_model(), MemoryConfig(offload_blocks=3), torch.device("cpu"))


@pytest.mark.parametrize("in_place", [True, False])
def test_loading_in_place_gives_the_same_model(tmp_path, in_place) -> None:
    model = _model(seed=3)
    state = model.state_dict()
    folder = save_trained(
        tmp_path / "ckpt", state, state,
        config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
        run={"run_id": "r"},
    )
    loaded = load_trained_transformer(folder, in_place=in_place)
    assert not any(param.is_meta for param in loaded.parameters())
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
