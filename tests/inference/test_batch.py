"""Batch generation: upstream's request format, sidecars, idempotent resume, safe names, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from humo.config import GenerateConfig, RequestLimitsConfig
from humo.inference.batch import generate_batch, read_requests, safe_output_stem
from humo.inference.generate import GENERATOR_TAG, ModelInfo, file_sha256, load_model

MODEL = ModelInfo(name="tiny-random", version="test", source="tests")
SETTINGS = GenerateConfig(steps=2, height=32, width=32, max_frames=9, progress_bar=False)
LIMITS = RequestLimitsConfig()


def upstream_paths(real_data: Path) -> dict[str, Path]:
    """Upstream's request names ./examples/<name>; the shared copies carry a humo_ prefix (explicit mapping)."""
    return {
        "./examples/man_Jaime.png": real_data / "humo_man_Jaime.png",
        "./examples/audio1.wav": real_data / "humo_audio1.wav",
    }


def test_reads_upstream_test_case_json(real_data) -> None:
    requests = read_requests(real_data / "humo_test_case.json")
    assert [r.id for r in requests] == ["case_1"]
    assert requests[0].fields["img_paths"] == ["./examples/man_Jaime.png"]
    assert requests[0].fields["prompt"].startswith("The scene unfolds")


def test_safe_output_names() -> None:
    assert safe_output_stem("case_1", 7) == "case_1_seed7"
    evil = safe_output_stem("../../etc/passwd", 1)
    assert "/" not in evil and not evil.startswith(".") and evil.endswith("_seed1")
    assert safe_output_stem("a/b", 1) != safe_output_stem("a_b", 1)  # replaced characters add a hash


def test_upstream_request_generates_mp4_and_sidecar_then_skips(pipeline, real_data, tmp_path) -> None:
    import av

    out = tmp_path / "out"
    summary = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS, LIMITS, MODEL,
                             path_map=upstream_paths(real_data))
    assert summary.count("generated") == 1, summary.to_dict()
    video = out / "case_1_seed666666.mp4"
    sidecar = json.loads((out / "case_1_seed666666.json").read_text())
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert float(container.streams.video[0].average_rate) == 25.0
    assert sidecar["generator"] == GENERATOR_TAG and sidecar["settings"]["seed"] == 666666
    assert sidecar["settings"]["mode"] == "TIA" and sidecar["model"]["name"] == "tiny-random"
    assert sidecar["guidance_schedule"]["chain"] == ["TIA", "TI", "I", "∅"]
    audio_hashes = [v for k, v in sidecar["request"]["inputs"].items() if k.startswith("audio:")]
    assert len(audio_hashes) == 1 and len(audio_hashes[0]) == 64  # sha256 of the audio file
    # the tiny model samples with the form it was trained and evaluated with (auto -> humo-17b, 5.0/5.5)
    assert sidecar["settings"]["guidance"]["configured_form"] == "auto"
    assert sidecar["settings"]["guidance"]["form"] == "humo-17b"
    assert (sidecar["settings"]["guidance"]["scale_text"], sidecar["settings"]["guidance"]["scale_audio"]) == (5.0, 5.5)
    assert sidecar["output"]["num_frames"] == 9 and sidecar["timings"]["denoise"] > 0
    stamp = video.stat().st_mtime_ns

    again = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS, LIMITS, MODEL,
                           path_map=upstream_paths(real_data))
    assert again.count("skipped") == 1 and video.stat().st_mtime_ns == stamp
    # a different setting changes the key: regenerated, not skipped
    changed = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS.model_copy(update={"steps": 1}),
                             LIMITS, MODEL, path_map=upstream_paths(real_data))
    assert changed.count("generated") == 1
    # a damaged output (hash mismatch) is regenerated on resume
    video.write_bytes(b"truncated")
    resumed = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS.model_copy(update={"steps": 1}),
                             LIMITS, MODEL, path_map=upstream_paths(real_data))
    assert resumed.count("generated") == 1 and video.stat().st_size > 1000


def _write_wav(path: Path, audio: np.ndarray, rate: int, subtype: str | None = None) -> Path:
    soundfile.write(str(path), audio, rate, subtype=subtype)
    return path


def _bomb_png(path: Path, side: int) -> Path:
    """A tiny PNG file that claims side x side pixels (a decompression bomb: its header is all that is read)."""
    from PIL import Image

    Image.new("1", (side, side)).save(path, optimize=True)
    return path


def test_bad_requests_fail_with_reasons_and_the_batch_goes_on(pipeline, real_data, tmp_path) -> None:
    image = real_data / "humo_man_Jaime.png"
    speech = real_data / "humo_audio1.wav"
    t = np.arange(int(0.5 * 44_100)) / 44_100
    stereo = _write_wav(tmp_path / "stereo44k.wav", np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3, 44_100)
    silent = _write_wav(tmp_path / "silent.wav", np.zeros(8_000), 16_000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notimage.png").write_text("not an image")
    _write_wav(tmp_path / "nan.wav", np.where(np.arange(16_000) == 500, np.nan, 0.1), 16_000, subtype="FLOAT")
    _write_wav(tmp_path / "short.wav", np.sin(np.arange(1_600) / 5) * 0.3, 16_000)  # 0.1 s
    _bomb_png(tmp_path / "bomb.png", 20_000)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "foreign_seed1.mp4").write_bytes(b"someone else's file")
    ok = {"prompt": "a man talks", "img_paths": [str(image)], "audio_path": str(speech), "seed": 1}
    requests = [
        {"id": "good", **ok},
        {"id": "stereo44k", **ok, "audio_path": "stereo44k.wav"},  # relative to the request file
        {"id": "silent", **ok, "audio_path": "silent.wav"},
        {"id": "../../escape", **ok, "num_frames": 5},
        {"id": "missing_image", **ok, "img_paths": ["nope.png"]},
        {"id": "unreadable_image", **ok, "img_paths": ["notimage.png"]},
        {"id": "bomb_image", **ok, "img_paths": ["bomb.png"]},
        {"id": "missing_audio", **ok, "audio_path": "nope.wav"},
        {"id": "corrupt_audio", **ok, "audio_path": "corrupt.wav"},
        {"id": "empty_audio", **ok, "audio_path": "empty.wav"},
        {"id": "nan_audio", **ok, "audio_path": "nan.wav"},
        {"id": "short_audio", **ok, "audio_path": "short.wav"},
        {"id": "no_image", **ok, "img_paths": [], "mode": "TIA"},
        {"id": "huge", **ok, "height": 100_000},
        {"id": "over_limit", **ok, "height": 4096, "width": 4096},  # a multiple of 16, but over limits.max_video_side
        {"id": "zero", **ok, "height": 0},
        {"id": "negative_steps", **ok, "steps": -3},
        {"id": "seed_overflow", **ok, "seed": 2**64},
        {"id": "long", **ok, "num_frames": 1_000_001},
        {"id": "typo", **ok, "promt": "x"},
        {"id": "foreign", **ok},
        {"id": "good", **ok},  # duplicate id
    ]
    lines = [json.dumps(r) for r in requests] + ["{not json"]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    summary = generate_batch(pipeline, tmp_path / "requests.jsonl", tmp_path / "out", SETTINGS, LIMITS, MODEL)
    by_id = {}
    for result in summary.results:
        by_id.setdefault(result.id, result)
    status = {request_id: r.status for request_id, r in by_id.items()}
    assert {k for k, v in status.items() if v == "generated"} == {"good", "stereo44k", "silent", "../../escape"}
    assert sum("silent" in note for note in by_id["silent"].notes) == 1  # noted once, not once per layer
    escaped = Path(by_id["../../escape"].video)
    assert escaped.parent == tmp_path / "out"
    expected = {
        "missing_image": "img_paths: ",
        "unreadable_image": "img_paths: is not a readable image",
        "bomb_image": "img_paths: too large",
        "missing_audio": "audio_path: ",
        "corrupt_audio": "audio_path: is not a readable audio file",
        "empty_audio": "audio_path: is not a readable audio file",
        "nan_audio": "audio_path: holds NaN or infinite samples",
        "short_audio": "audio_path: too short: 0.100 s",
        "no_image": "img_paths: mode 'TIA' needs a reference image",
        "huge": "height: 100000 must be a multiple of 16 between 16 and 1024",
        "over_limit": "height: 4096 must be a multiple of 16 between 16 and 1024",
        "zero": "height: Input should be greater than or equal to 1",
        "negative_steps": "steps: Input should be greater than or equal to 1",
        "seed_overflow": "seed: 18446744073709551616 is out of range",
        "long": "num_frames: 1000001 is out of range; allowed 1..9",
        "typo": "promt: unknown field",
        "foreign": "refusing to overwrite",
        f"line{len(requests) + 1}": "not valid JSON",
    }
    for request_id, fragment in expected.items():
        assert by_id[request_id].status == "failed", request_id
        assert fragment in by_id[request_id].reason, (request_id, by_id[request_id].reason)
    assert summary.results[-2].status == "failed" and "repeats" in summary.results[-2].reason
    assert (tmp_path / "out" / "foreign_seed1.mp4").read_bytes() == b"someone else's file"
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["generated"] == 4 and written["failed"] == len(requests) + 1 - 4


def test_model_references(tmp_path) -> None:
    with pytest.raises(ValueError, match="no resolver for it was given"):
        load_model("nosuch:/thing")
    resolvers = {"memory": lambda ref: ("model", ModelInfo("m", "1", ref))}
    assert load_model("memory:/m@champion", resolvers)[1].source == "memory:/m@champion"
    with pytest.raises(ValueError, match="no resolver"):
        load_model("memory:/m@champion")  # nothing is registered globally: resolvers are passed explicitly
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "not_a_checkpoint")


def test_long_audio_is_generated_in_windows_when_enabled(pipeline, real_data, tmp_path) -> None:
    from humo.config import LongVideoConfig

    settings = SETTINGS.model_copy(update={"long_video": LongVideoConfig(enabled=True, overlap_latent_frames=1,
                                                                          max_total_frames=17)})
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"id": "long", "prompt": "a man talks", "mode": "TA",
                                    "audio_path": str(real_data / "humo_audio1.wav")}) + "\n")
    summary = generate_batch(pipeline, requests, tmp_path / "out", settings, LIMITS, MODEL)
    assert summary.count("generated") == 1, summary.to_dict()
    sidecar = json.loads(Path(summary.results[0].sidecar).read_text())
    assert sidecar["output"]["long_video"] is True and sidecar["output"]["num_frames"] == 17  # > max_frames=9


KILLED_RUN = """
import os
import sys
from pathlib import Path

import torch

import humo.inference.generate as core
from conftest import TINY_VAE_BASE_DIM, make_transformer
from humo.config import AudioEncoderConfig, GenerateConfig, RequestLimitsConfig, TextEncoderConfig
from humo.inference.batch import generate_batch
from humo.inference.pipeline import HumoPipeline
from humo.models.encoders import VideoVAE, build_tiny_vae, load_audio_encoder, load_text_encoder

real_replace = os.replace


def replace_then_die(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".mp4"):
        os._exit(137)  # killed right after the video's rename, before the sidecar's


core.os.replace = replace_then_die
torch.manual_seed(0)
vae = VideoVAE(build_tiny_vae(TINY_VAE_BASE_DIM))
pipe = HumoPipeline(make_transformer(), vae, load_text_encoder(TextEncoderConfig()),
                    load_audio_encoder(AudioEncoderConfig()), max_frames=17)
settings = GenerateConfig(steps=2, height=32, width=32, max_frames=9, progress_bar=False)
generate_batch(pipe, Path(sys.argv[1]), Path(sys.argv[2]), settings, RequestLimitsConfig(),
               core.ModelInfo(name="tiny-random", version="test", source="tests"))
"""


def test_a_run_killed_between_the_two_renames_is_completed_by_the_next(pipeline, real_data, tmp_path) -> None:
    requests, out = tmp_path / "r.jsonl", tmp_path / "out"
    requests.write_text(json.dumps({"id": "k", "prompt": "a man talks", "mode": "TA", "seed": 3,
                                    "audio_path": str(real_data / "humo_audio1.wav")}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(requests), str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]
    video, sidecar = out / "k_seed3.mp4", out / "k_seed3.json"
    assert video.is_file() and not sidecar.exists() and (out / "k_seed3.json.tmp").is_file()
    killed_bytes = video.read_bytes()
    (out / "k_seed3.mp4.tmp.mp4").write_bytes(b"a render cut short")  # what a kill during encoding leaves

    # the next run finishes the pair (same model, same request: the key matches) and cleans the temporary files
    summary = generate_batch(pipeline, requests, out, SETTINGS, LIMITS, MODEL)
    assert summary.results[0].status == "skipped", summary.to_dict()
    assert json.loads(sidecar.read_text())["output"]["sha256"] == file_sha256(video)
    assert sorted(p.name for p in out.iterdir()) == ["k_seed3.json", "k_seed3.mp4", "summary.json"]
    # and the completed video is the one a fresh, uninterrupted run makes
    fresh = generate_batch(pipeline, requests, tmp_path / "fresh", SETTINGS, LIMITS, MODEL)
    assert fresh.count("generated") == 1 and (tmp_path / "fresh" / "k_seed3.mp4").read_bytes() == killed_bytes


def test_every_entry_point_makes_the_same_video(pipeline, real_data, tmp_path) -> None:
    """Batch (files) and the core called directly (arrays, as serving and evaluation do) give the same bytes."""
    from humo.data.media import read_audio
    from humo.inference.generate import GenerationRequest, generate

    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"id": "same", "prompt": "a man talks", "mode": "TA", "seed": 5,
                                    "audio_path": str(real_data / "humo_audio1.wav")}) + "\n")
    generate_batch(pipeline, requests, tmp_path / "batch", SETTINGS, LIMITS, MODEL)
    request = GenerationRequest(prompt="a man talks", mode="TA", seed=5,
                                audio=read_audio(real_data / "humo_audio1.wav"))
    direct = generate(pipeline, request, SETTINGS, LIMITS, video_path=tmp_path / "direct.mp4")
    assert direct.output.path.read_bytes() == (tmp_path / "batch" / "same_seed5.mp4").read_bytes()
