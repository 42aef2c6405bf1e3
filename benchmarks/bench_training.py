"""Training benchmarks, measured side by side in one run (issue #5):

1. samples/s of training steps fed from precomputed shards vs the same steps encoding each batch on the fly
   (read mp4 + reference, VAE + text + audio encoders), on SynthTalk clips from ``data/raw`` or the manifest;
2. per-process parameter memory with FSDP on 2 processes vs DDP on 2 processes (CPU, gloo), read from the
   ``parameters`` entry the training stage writes into run.json;
3. stage 2 with a LoRA adapter (``train.adapter``, rank ``--lora-rank``) vs full stage-2 fine-tuning: step time
   (the two timed in turns, step by step), trainable parameters and optimizer-state bytes (issue #17).

    .venv/bin/python benchmarks/bench_training.py [--clips 16] [--steps 4] [--batch 4] [--lora-rank 16]

Uses ``artifacts/curate/manifest.parquet`` and ``artifacts/train_vae/vae`` when they exist (else a random tiny
VAE of the same architecture: the same cost).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
HUMO = Path(sys.executable).with_name("humo")


def _prepare(work: Path, clips: int) -> tuple[Path, pd.DataFrame]:
    """A manifest slice with absolute paths and a VAE folder under ``work/artifacts``."""
    from humo.models.encoders import build_tiny_vae

    artifacts = work / "artifacts"
    (artifacts / "curate").mkdir(parents=True)
    manifest = pd.read_parquet(ROOT / "artifacts" / "curate" / "manifest.parquet")
    manifest = pd.concat([manifest[manifest.split == "train"].iloc[:clips], manifest[manifest.split != "train"].iloc[:4]])
    for column in ("video", "reference_image"):
        manifest[column] = [str((ROOT / v).resolve()) for v in manifest[column]]
    manifest.to_parquet(artifacts / "curate" / "manifest.parquet")
    vae = ROOT / "artifacts" / "train_vae" / "vae"
    if vae.is_dir():
        import shutil

        shutil.copytree(vae, artifacts / "train_vae" / "vae")
    else:
        torch.manual_seed(0)
        build_tiny_vae(16).save_pretrained(artifacts / "train_vae" / "vae")
    return artifacts, manifest


def _system(null_text: torch.Tensor, lora: dict | None = None):
    from humo.models.transformer import HumoTransformer3D
    from humo.training.system import HumoSystem

    torch.manual_seed(0)
    system = HumoSystem(
        HumoTransformer3D.from_preset("tiny"), stage=2, null_text_embeds=null_text, learning_rate=1e-4, lora=lora
    )
    optimizer = torch.optim.AdamW([p for p in system.parameters() if p.requires_grad], lr=1e-4)
    return system, optimizer


def _train_step(system, optimizer, batch: dict[str, torch.Tensor], step: int) -> None:
    loss = system._step(batch, torch.Generator().manual_seed(step), drop=True, shard=False)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def bench_throughput(artifacts: Path, manifest: pd.DataFrame, steps: int, batch: int) -> tuple[float, float]:
    """(samples/s from shards, samples/s encoding on the fly) for the same steps of the same model."""
    from humo.config import load_params
    from humo.features import precompute
    from humo.training.datamodule import ShardDataModule

    params = load_params(ROOT / "params.yaml", [f"paths.artifacts={artifacts}", "precompute.shard_size=16"])
    precompute.run(params.precompute, params.encoders, params.paths)
    datamodule = ShardDataModule(artifacts / "precompute", batch_size=batch, num_steps=steps + 1, seed=0)
    system, optimizer = _system(datamodule.null_text_embeds())
    loader = iter(datamodule.train_dataloader())
    _train_step(system, optimizer, next(loader), 0)  # warm-up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        _train_step(system, optimizer, next(loader), step)
    from_shards = steps * batch / (time.perf_counter() - start)

    encoder = precompute.ClipEncoder(params.encoders, artifacts / "train_vae" / "vae", ROOT)
    train_rows = manifest[manifest.split == "train"].reset_index(drop=True)
    system, optimizer = _system(datamodule.null_text_embeds())
    start = time.perf_counter()
    for step in range(1, steps + 1):
        rows = train_rows.iloc[[(step * batch + i) % len(train_rows) for i in range(batch)]]
        items = encoder.encode_rows(rows)
        collated = torch.utils.data.default_collate(list(items.values()))
        _train_step(system, optimizer, collated, step)
    on_the_fly = steps * batch / (time.perf_counter() - start)
    return from_shards, on_the_fly


def bench_lora(artifacts: Path, steps: int, batch: int, rank: int) -> dict[str, dict[str, float]]:
    """Full stage-2 fine-tuning vs a LoRA of ``rank`` on the same batches: s/step (timed in turns after one
    warm-up step each), trainable parameters, their share and the optimizer-state bytes."""
    from humo.training.datamodule import ShardDataModule
    from humo.training.train import optimizer_state_bytes

    datamodule = ShardDataModule(artifacts / "precompute", batch_size=batch, num_steps=steps + 1, seed=0)
    batches = list(datamodule.train_dataloader())
    runs = {
        "full": _system(datamodule.null_text_embeds()),
        f"LoRA r{rank}": _system(datamodule.null_text_embeds(), {"rank": rank, "alpha": float(rank), "dropout": 0.0,
                                                                 "target_modules": None}),
    }
    seconds = {name: 0.0 for name in runs}
    for name, (system, optimizer) in runs.items():
        _train_step(system, optimizer, batches[0], 0)  # warm-up (and the optimizer state exists)
    for step in range(1, steps + 1):
        for name, (system, optimizer) in runs.items():
            start = time.perf_counter()
            _train_step(system, optimizer, batches[step], step)
            seconds[name] += time.perf_counter() - start
    out = {}
    for name, (system, optimizer) in runs.items():
        total = sum(p.numel() for p in system.transformer.parameters())
        trainable = sum(p.numel() for p in system.transformer.parameters() if p.requires_grad)
        out[name] = {
            "seconds_per_step": seconds[name] / steps,
            "trainable_parameters": trainable,
            "trainable_share": trainable / total,
            "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        }
    return out


def bench_memory(artifacts: Path, uri: str) -> dict[str, dict]:
    """run.json ``parameters`` of 2-step stage-1 runs with DDP and FSDP on 2 CPU processes."""
    out = {}
    for strategy in ("ddp", "fsdp"):
        cmd = [
            sys.executable, str(HUMO), "train-stage1", "--params", str(ROOT / "params.yaml"),
            f"paths.artifacts={artifacts}", f"tracking.uri={uri}", "train.batch_size=4", "train.val_batches=1",
            "train_stage1.steps=2", f"train.strategy={strategy}", "train.devices=2", "train.val_every_n_steps=2",
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{strategy} run failed:\n{done.stderr[-3000:]}")
        out[strategy] = json.loads((artifacts / "train_stage1" / "run.json").read_text())["parameters"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts, manifest = _prepare(Path(tmp), args.clips)
        from_shards, on_the_fly = bench_throughput(artifacts, manifest, args.steps, args.batch)
        adapters = bench_lora(artifacts, args.steps, args.batch, args.lora_rank)
        memory = bench_memory(artifacts, f"sqlite:///{Path(tmp) / 'mlflow.db'}")
    ddp, fsdp = memory["ddp"]["local_bytes"], memory["fsdp"]["local_bytes"]
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; tiny preset, batch {args.batch}")
    print(f"{'training samples/s':32s} {'from shards':>14s} {'on the fly':>14s} {'ratio':>8s}")
    print(f"{'':32s} {from_shards:14.2f} {on_the_fly:14.2f} {from_shards / on_the_fly:7.1f}x")
    print(f"{'parameter bytes per process':32s} {'DDP (2 procs)':>14s} {'FSDP (2 procs)':>14s} {'ratio':>8s}")
    print(f"{'':32s} {ddp:14,d} {fsdp:14,d} {fsdp / ddp:8.2f}")
    print(f"FSDP: {memory['fsdp']['num_dtensor_parameters']}/{memory['fsdp']['num_parameters']} parameters are DTensors")
    print(f"{'stage 2':32s} {'s/step':>14s} {'trainable':>14s} {'share':>8s} {'optimizer state':>16s}")
    for name, row in adapters.items():
        print(f"{name:32s} {row['seconds_per_step']:14.3f} {row['trainable_parameters']:14,d} "
              f"{row['trainable_share']:8.1%} {row['optimizer_state_bytes']:16,d}")
    full, low = adapters["full"], adapters[f"LoRA r{args.lora_rank}"]
    print(f"{'LoRA / full':32s} {low['seconds_per_step'] / full['seconds_per_step']:14.2f} "
          f"{low['trainable_parameters'] / full['trainable_parameters']:14.2f} {'':8s} "
          f"{low['optimizer_state_bytes'] / full['optimizer_state_bytes']:16.2f}")


if __name__ == "__main__":
    main()
