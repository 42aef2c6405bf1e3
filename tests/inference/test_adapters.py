"""LoRA adapters at inference (``model.adapters``): merged and beside-the-layers generate the same, files of other
layouts load to the same update, and the sidecar says which adapters made a video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from humo.cli import app
from humo.config import AdapterRef, GenerateConfig, RequestLimitsConfig
from humo.inference.generate import GenerationRequest, ModelInfo, attach_adapters, generate
from humo.inference.pipeline import HumoPipeline
from humo.models import lora

SETTINGS = GenerateConfig(steps=3, height=32, width=32, max_frames=9, progress_bar=False)
LIMITS = RequestLimitsConfig()
INFO = ModelInfo(name="tiny", version="test", source="tests")


def random_lora(model: torch.nn.Module, targets: tuple[str, ...], rank: int = 4, seed: int = 0) -> lora.LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name in lora.resolve_targets(model, targets):
        layer = model.get_submodule(name)
        modules[name] = lora.LoraFactors(
            down=torch.randn(rank, layer.in_features, generator=generator) * 0.1,
            up=torch.randn(layer.out_features, rank, generator=generator) * 0.1,
            alpha=float(2 * rank),
        )
    return lora.LoraWeights(modules)


@pytest.fixture()
def adapters(tmp_path: Path, model_factory) -> list[AdapterRef]:
    model = model_factory()
    first = lora.save_lora(tmp_path / "style.safetensors", random_lora(model, lora.BLOCK_TARGETS, seed=1))
    second = lora.save_lora(tmp_path / "voice.safetensors", random_lora(model, lora.AUDIO_TARGETS[:4], rank=2, seed=2))
    return [AdapterRef(path=first, scale=0.8), AdapterRef(path=second, scale=1.5)]


def _latents(transformer, text_encoder, audio_encoder, tiny_vae, speech) -> torch.Tensor:
    pipe = HumoPipeline(transformer, tiny_vae, text_encoder, audio_encoder, max_frames=9)
    pipe.set_progress_bar_config(disable=True)
    request = GenerationRequest(prompt="a man talks", mode="TA", audio=speech[:16000], seed=3)
    return torch.as_tensor(generate(pipe, request, SETTINGS, LIMITS, output_type="latent").output.frames)


def test_merged_and_unmerged_adapters_generate_the_same(
    model_factory, adapters, text_encoder, audio_encoder, tiny_vae, speech
) -> None:
    plain = _latents(model_factory(), text_encoder, audio_encoder, tiny_vae, speech)
    merged_model, merged_info = attach_adapters(model_factory(), INFO, adapters, merge=True)
    beside_model, beside_info = attach_adapters(model_factory(), INFO, adapters, merge=False)
    merged = _latents(merged_model, text_encoder, audio_encoder, tiny_vae, speech)
    beside = _latents(beside_model, text_encoder, audio_encoder, tiny_vae, speech)
    gap = (merged - beside).abs().max().item()
    assert gap < 1e-5
    assert (merged - plain).abs().max().item() > 100 * max(gap, 1e-7)  # the adapters change the video
    assert [a["scale"] for a in merged_info.describe()["adapters"]] == [0.8, 1.5]
    assert merged_info.adapters[0]["merged"] is True and beside_info.adapters[0]["merged"] is False
    assert "adapters" not in INFO.describe()  # a model without adapters records what it always recorded


def _diffusers_name(module: str) -> str:
    return module.replace("self_attn.q", "attn1.to_q").replace("ffn.0", "ffn.net.0.proj")


def test_every_common_layout_reads_to_the_same_update(tmp_path: Path, model_factory) -> None:
    model = model_factory()
    weights = random_lora(model, ("self_attn.q", "ffn.0"), rank=3)
    ours = lora.read_lora(lora.save_lora(tmp_path / "ours.safetensors", weights), model)
    layouts = {
        "peft": lambda m, f: {f"base_model.model.{m}.lora_A.weight": f.down, f"base_model.model.{m}.lora_B.weight": f.up},
        "peft_default": lambda m, f: {f"base_model.model.{m}.lora_A.default.weight": f.down,
                                      f"base_model.model.{m}.lora_B.default.weight": f.up},
        "diffsynth": lambda m, f: {f"{m}.lora_A.weight": f.down, f"{m}.lora_B.weight": f.up},
        "diffusers": lambda m, f: {f"transformer.{_diffusers_name(m)}.lora_A.weight": f.down,
                                   f"transformer.{_diffusers_name(m)}.lora_B.weight": f.up,
                                   f"transformer.{_diffusers_name(m)}.alpha": torch.tensor(f.alpha)},
        "kohya": lambda m, f: {f"lora_unet_{m.replace('.', '_')}.lora_down.weight": f.down,
                               f"lora_unet_{m.replace('.', '_')}.lora_up.weight": f.up,
                               f"lora_unet_{m.replace('.', '_')}.alpha": torch.tensor(f.alpha)},
    }
    for layout, keys in layouts.items():
        folder = tmp_path / layout
        folder.mkdir()
        state = {}
        for module, factors in weights.modules.items():
            state.update(keys(module, factors))
        save_file(state, str(folder / "adapter_model.safetensors"))
        if layout.startswith("peft"):  # peft keeps alpha in its config file
            (folder / lora.PEFT_CONFIG_FILE).write_text(json.dumps({"r": 3, "lora_alpha": 6.0}))
        elif layout == "diffsynth":  # no alpha anywhere: alpha = r (scale 1)
            pass
        got = lora.read_lora(folder, model)
        assert set(got.modules) == set(ours.modules), layout
        for module, factors in got.modules.items():
            expected_alpha = 3.0 if layout == "diffsynth" else 6.0
            assert factors.alpha == expected_alpha, layout
            assert torch.equal(factors.down, ours.modules[module].down) and torch.equal(factors.up, ours.modules[module].up)


def test_files_that_do_not_fit_are_refused_with_the_reason(tmp_path: Path, model_factory) -> None:
    model = model_factory()
    other = model_factory(dim=64, ffn_dim=128, num_heads=2)
    path = lora.save_lora(tmp_path / "wide.safetensors", random_lora(other, ("self_attn.q",)))
    with pytest.raises(lora.LoraFormatError, match="does not fit this model"):
        lora.read_lora(path, model)
    save_file({"diffusion_model.blocks.0.self_attn.q.diff": torch.zeros(128, 128)}, str(tmp_path / "diff.safetensors"))
    with pytest.raises(lora.LoraFormatError, match="diff"):
        lora.read_lora(tmp_path / "diff.safetensors", model)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 128)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(lora.LoraFormatError, match="needs both"):
        lora.read_lora(tmp_path / "half.safetensors", model)


def test_generate_command_puts_adapters_on_the_model(tmp_path, params_path, generate_case, adapters) -> None:
    checkpoint, requests, overrides = generate_case
    refs = "[" + ", ".join(f"{{path: {a.path}, scale: {a.scale}}}" for a in adapters) + "]"
    result = CliRunner().invoke(
        app,
        ["generate", "--requests", str(requests), "--out", str(tmp_path / "out"), "--model", str(checkpoint),
         "--params", str(params_path), *overrides, f"model.adapters={refs}", "model.merge_adapters=true"],
    )
    assert result.exit_code == 1, result.output  # the bad request of the case fails alone
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sidecar = json.loads(Path(summary["results"][0]["sidecar"]).read_text())
    assert [a["path"] for a in sidecar["model"]["adapters"]] == [str(a.path) for a in adapters]
    missing = CliRunner().invoke(
        app,
        ["generate", "--requests", str(requests), "--out", str(tmp_path / "out2"), "--model", str(checkpoint),
         "--params", str(params_path), *overrides, f"model.adapters=[{{path: {tmp_path / 'nope.safetensors'}}}]"],
    )
    assert missing.exit_code == 2 and "nope.safetensors" in missing.output
    whole = CliRunner().invoke(
        app,
        ["generate", "--requests", str(requests), "--out", str(tmp_path / "out4"), "--model", str(checkpoint),
         "--params", str(params_path), *overrides, f"model.adapters=[{{path: {checkpoint}}}]"],
    )
    assert whole.exit_code == 2 and "not a LoRA adapter" in whole.output
    fp8 = CliRunner().invoke(
        app,
        ["generate", "--requests", str(requests), "--out", str(tmp_path / "out3"), "--model", str(checkpoint),
         "--params", str(params_path), *overrides, f"model.adapters={refs}", "generate.memory.weight_storage=fp8"],
    )
    assert fp8.exit_code == 2 and "merge_adapters" in fp8.output
