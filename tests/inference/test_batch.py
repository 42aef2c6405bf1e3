"""Batch generation: upstream's request format, sidecars, idempotent resume, safe names, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from humo.config import GenerateConfig
from humo.inference.batch import (
    GENERATOR_TAG,
    ModelInfo,
    generate_batch,
    load_model,
    read_requests,
    register_model_resolver,
    safe_output_stem,
)

MODEL = ModelInfo(name="tiny-random", version="test", source="tests")
SETTINGS = GenerateConfig(steps=2, height=32, width=32, max_frames=9, progress_bar=False)


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
    summary = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS, MODEL,
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
    assert len(next(iter(sidecar["inputs"]["audio"].values()))) == 64  # sha256 of the audio file
    assert sidecar["output"]["num_frames"] == 9 and sidecar["timings"]["denoise"] > 0
    stamp = video.stat().st_mtime_ns

    again = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS, MODEL,
                           path_map=upstream_paths(real_data))
    assert again.count("skipped") == 1 and video.stat().st_mtime_ns == stamp
    # a different setting changes the key: regenerated, not skipped
    changed = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS.model_copy(update={"steps": 1}),
                             MODEL, path_map=upstream_paths(real_data))
    assert changed.count("generated") == 1
    # a damaged output (hash mismatch) is regenerated on resume
    video.write_bytes(b"truncated")
    resumed = generate_batch(pipeline, real_data / "humo_test_case.json", out, SETTINGS.model_copy(update={"steps": 1}),
                             MODEL, path_map=upstream_paths(real_data))
    assert resumed.count("generated") == 1 and video.stat().st_size > 1000


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    soundfile.write(str(path), audio, rate)
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
        {"id": "missing_audio", **ok, "audio_path": "nope.wav"},
        {"id": "corrupt_audio", **ok, "audio_path": "corrupt.wav"},
        {"id": "empty_audio", **ok, "audio_path": "empty.wav"},
        {"id": "no_image", **ok, "img_paths": [], "mode": "TIA"},
        {"id": "huge", **ok, "height": 100_000},
        {"id": "long", **ok, "num_frames": 1_000_001},
        {"id": "typo", **ok, "promt": "x"},
        {"id": "foreign", **ok},
        {"id": "good", **ok},  # duplicate id
    ]
    lines = [json.dumps(r) for r in requests] + ["{not json"]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    summary = generate_batch(pipeline, tmp_path / "requests.jsonl", tmp_path / "out", SETTINGS, MODEL)
    by_id = {}
    for result in summary.results:
        by_id.setdefault(result.id, result)
    status = {request_id: r.status for request_id, r in by_id.items()}
    assert {k for k, v in status.items() if v == "generated"} == {"good", "stereo44k", "silent", "../../escape"}
    assert any("silent" in note for note in by_id["silent"].notes)
    escaped = Path(by_id["../../escape"].video)
    assert escaped.parent == tmp_path / "out"
    expected = {
        "missing_image": "not found",
        "unreadable_image": "not a readable image",
        "missing_audio": "not found",
        "corrupt_audio": "corrupt or empty",
        "empty_audio": "corrupt or empty",
        "no_image": "needs a reference image",
        "huge": "multiple of 16",
        "long": "exceeds the maximum",
        "typo": "unknown field 'promt'",
        "foreign": "refusing to overwrite",
        "line16": "not valid JSON",
    }
    for request_id, fragment in expected.items():
        assert by_id[request_id].status == "failed", request_id
        assert fragment in by_id[request_id].reason, (request_id, by_id[request_id].reason)
    assert summary.results[-2].status == "failed" and "repeats" in summary.results[-2].reason
    assert (tmp_path / "out" / "foreign_seed1.mp4").read_bytes() == b"someone else's file"
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["generated"] == 4 and written["failed"] == len(requests) + 1 - 4


def test_model_references(tmp_path) -> None:
    with pytest.raises(ValueError, match="no resolver is registered"):
        load_model("nosuch:/thing")
    register_model_resolver("memory", lambda ref: ("model", ModelInfo("m", "1", ref)))
    assert load_model("memory:/m@champion")[1].source == "memory:/m@champion"
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "not_a_checkpoint")


def test_long_audio_is_generated_in_windows_when_enabled(pipeline, real_data, tmp_path) -> None:
    from humo.config import LongVideoConfig

    settings = SETTINGS.model_copy(update={"long_video": LongVideoConfig(enabled=True, overlap_latent_frames=1,
                                                                          max_total_frames=17)})
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"id": "long", "prompt": "a man talks", "mode": "TA",
                                    "audio_path": str(real_data / "humo_audio1.wav")}) + "\n")
    summary = generate_batch(pipeline, requests, tmp_path / "out", settings, MODEL)
    assert summary.count("generated") == 1, summary.to_dict()
    sidecar = json.loads(Path(summary.results[0].sidecar).read_text())
    assert sidecar["output"]["long_video"] is True and sidecar["output"]["num_frames"] == 17  # > max_frames=9
