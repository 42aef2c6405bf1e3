"""``humo export``: upstream's file layout (strict key list at a tiny width), LoRA files, fp8, and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from humo.cli import app
from humo.config import ModelConfig
from humo.models import lora
from humo.models.checkpoints import load_trained_transformer
from humo.models.convert import load_humo_checkpoint
from humo.models.testing import UPSTREAM_TEST_OVERRIDES, randomize_, upstream_layout, upstream_layout_config
from humo.models.transformer import HumoTransformer3D
from humo.registry import export

from .test_adapters import make_adapter


def _keys_and_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    found: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    found[key] = tuple(handle.get_slice(key).get_shape())
    return found


def _forward(model: torch.nn.Module, in_channels: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    cfg = model.humo_config
    with torch.no_grad():
        return model(
            hidden_states=torch.randn(1, in_channels, 3, 4, 4, generator=generator), timestep=torch.tensor([500.0]),
            encoder_hidden_states=torch.randn(1, 5, cfg.text_dim, generator=generator),
            audio_features=torch.randn(1, 3, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=generator),
            num_ref_frames=1,
        ).sample


@pytest.mark.parametrize(("preset", "in_dim", "sharded"), [("humo-1.7b", 16, False), ("humo-17b", 36, True)])
def test_released_weights_export_to_upstreams_layout_with_its_exact_key_list(tmp_path, preset, in_dim, sharded) -> None:
    cfg = upstream_layout_config(preset)
    source = randomize_(HumoTransformer3D.from_preset(cfg), seed=4)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("mask_predictor.")}
    torch.save(state, tmp_path / "ema.pth")
    model_cfg = ModelConfig(preset=preset, overrides=UPSTREAM_TEST_OVERRIDES)
    out = tmp_path / "export"
    total = sum(v.numel() * v.element_size() for v in state.values())
    record = export.run(tmp_path / "ema.pth", out, model_cfg, max_shard_bytes=total // 3 + 1, root=tmp_path)
    written = sorted(out.glob("*.safetensors"))
    assert (len(written) >= 3) if sharded else (len(written) == 1)  # 1.7B: one file; 17B: shards + index
    assert (out / export.INDEX_FILE).is_file() == sharded
    # exactly upstream's tensors and shapes: what upstream's WanModel.load_state_dict(strict=True) needs
    assert _keys_and_shapes(written) == upstream_layout(in_dim)
    assert export.HUMO_DETECTION_KEY in _keys_and_shapes(written)
    reloaded = load_humo_checkpoint(out, cfg)
    loaded_state = {k: v for k, v in reloaded.state_dict().items() if not k.startswith("mask_predictor.")}
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
    assert set(record["files"]) == {p.name for p in out.iterdir()} - {export.CARD_FILE, export.RECORD_FILE}


def test_a_trained_folder_exports_and_reloads_to_identical_outputs(tmp_path, tiny_parts) -> None:
    out = tmp_path / "export"
    export.run(tiny_parts["checkpoint"], out, ModelConfig(), root=tmp_path)
    ours = load_trained_transformer(tiny_parts["checkpoint"])
    theirs = load_humo_checkpoint(out / export.SINGLE_FILE, ours.humo_config)
    assert torch.equal(_forward(ours, 16), _forward(theirs, 16))
    card = (out / export.CARD_FILE).read_text()
    assert "## Licence" in card and "random initialisation" in card and "stage 2" in card
    assert json.loads((out / export.RECORD_FILE).read_text())["files"][export.SINGLE_FILE]["sha256"][:16] in card


def test_an_adapter_exports_as_a_lora_file_that_imports_to_identical_outputs(tmp_path, tiny_parts) -> None:
    adapter = make_adapter(tmp_path / "lora_stage2", tiny_parts["checkpoint"], seed=7, run_id="run-lora")
    out = tmp_path / "export"
    export.run(adapter, out, ModelConfig(), merge=True, root=tmp_path)
    with safe_open(str(out / export.LORA_FILE), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("diffusion_model.") and k.endswith(("lora_A.weight", "lora_B.weight", ".alpha")) for k in keys)
    expected = _forward(load_trained_transformer(adapter), 16)
    base = load_trained_transformer(tiny_parts["checkpoint"])
    imported = lora.apply_adapters(base, [(lora.read_lora(out / export.LORA_FILE, base), 1.0)], merge=False)
    assert (_forward(imported, 16) - expected).abs().max() < 1e-5
    merged = load_humo_checkpoint(out / export.SINGLE_FILE, base.humo_config)
    assert torch.equal(_forward(merged, 16), expected)
    assert "LoRA r4" in (out / export.CARD_FILE).read_text()
    alone = tmp_path / "alone"
    export.run(adapter, alone, ModelConfig(), root=tmp_path)  # without --merge: the LoRA file and the card only
    assert sorted(p.name for p in alone.iterdir()) == sorted([export.LORA_FILE, export.CARD_FILE, export.RECORD_FILE])


def test_fp8_export_is_scaled_fp8_and_loads_close(tmp_path, tiny_parts) -> None:
    out = tmp_path / "fp8"
    export.run(tiny_parts["checkpoint"], out, ModelConfig(), fp8=True, root=tmp_path)
    with safe_open(str(out / export.SINGLE_FILE), framework="pt") as handle:
        assert "scaled_fp8" in handle.keys()
        assert handle.get_tensor("blocks.0.self_attn.q.weight").dtype == torch.float8_e4m3fn
    ours = load_trained_transformer(tiny_parts["checkpoint"])
    theirs = load_humo_checkpoint(out / export.SINGLE_FILE, ours.humo_config)
    want, got = _forward(ours, 16), _forward(theirs, 16)
    assert 0 < (got - want).abs().max() / want.abs().max() < 5e-2


def test_the_command_refuses_a_missing_source(tmp_path, params_path) -> None:
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--params", str(params_path)])
    assert result.exit_code == 2 and "does not exist" in result.output
