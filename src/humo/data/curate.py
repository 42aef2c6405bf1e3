"""The ``curate`` stage: raw source videos -> clean, synchronised training clips (issue 3).

Per source (:func:`process_source`, run in parallel worker processes):

1. read the caption (dataset or sidecar), probe the stream, check resolution and duration;
2. resample to ``curate.fps`` by timestamps (:func:`humo.data.probe.resample_indices`) and read the audio
   (container or sidecar, 16 kHz mono); reject silent or missing audio;
3. decode small analysis frames, find shots (:mod:`humo.data.shots`) and cut ``curate.num_frames`` windows
   inside shots only;
4. faces per frame (:mod:`humo.data.faces`), speech per frame (:mod:`humo.data.speech`), then per clip: face
   check, speech ratio, sync estimate (:mod:`humo.data.sync`), quality (:mod:`humo.data.quality`), reference
   image (the dataset's, else a face crop from another shot or a distant segment, never the clip itself);
5. accepted clips that need no cut or resample are referenced (or linked) as they are; the others are written
   with :func:`humo.data.media.write_video`, audio muxed and aligned.

Every source ends in the manifest (at least one clip) or in the rejects log with a source-level reason; a
source whose every clip fails gets the reason ``no_usable_clip`` with the clip reasons in its detail. An
unexpected exception inside one source becomes the reject ``crash`` (exception type and message), never a dead
stage.

Outputs: ``artifacts/curate/manifest.parquet``, ``rejects.jsonl``, ``clips/``, ``references/``;
``reports/curate/summary.json`` (counts per reason, timing) and ``histograms.png``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from humo.config import CurateConfig, PathsConfig
from humo.constants import AUDIO_SAMPLE_RATE
from humo.data import faces, landmarks, quality, shots, speech
from humo.data.captions import CAPTIONERS, CaptionError, read_caption_file
from humo.data.manifest import portable_path, write_manifest, write_rejects
from humo.data.media import MediaError, fit_audio_to_frames, has_audio_stream, read_audio, write_video
from humo.data.probe import (
    FrameReader,
    SourceProbe,
    analysis_size,
    decode_frames,
    probe_source,
    resample_indices,
)
from humo.data.sources import SourceItem, read_sources
from humo.data.sync import SyncEstimate, SyncScorer, make_scorer, resolve_scorer_name

logger = logging.getLogger(__name__)

LINKABLE_CODECS = ("h264", "aac")
"""(video, audio) codecs a source must have to be used as a clip without re-encoding."""
REFERENCE_MARGIN = 0.3
"""Margin around the face box of a cropped reference image, as a fraction of the box size."""
CHUNKSIZE = 4
"""Sources handed to a worker at a time."""


class SourceRejected(Exception):
    """Raised inside :func:`process_source` to reject the whole source with a reason and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SourceResult:
    """What one source gave: manifest rows, rejects and a few figures for the report."""

    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    """Duration of the source (0 when it could not be probed)."""
    face_detector: str | None = None
    face_hit_rate: float | None = None
    """Share of analysis frames where the detector found a face."""
    vad: str | None = None
    """Voice-activity detector used (``auto`` resolved)."""


def _reject(source: str, clip: str | None, reason: str, detail: str) -> dict[str, Any]:
    return {"source": source, "clip": clip, "reason": reason, "detail": detail}


# =====================================================================================================
# One source
# =====================================================================================================


def process_source(item: SourceItem, cfg: CurateConfig, out_dir: Path, project_root: Path) -> SourceResult:
    """Curate one source; never raises (a failure is recorded as a reject of the source).

    Args:
        item: the source.
        cfg: the ``curate`` section.
        out_dir: ``artifacts/curate``; clips go to ``clips/``, cropped references to ``references/``.
        project_root: root that manifest paths are made relative to.

    Returns:
        A :class:`SourceResult` with either rows or a source-level reject (and any clip rejects).
    """
    source = portable_path(item.video, project_root)
    result = SourceResult(source=source)
    try:
        if item.problem is not None:
            raise SourceRejected(*item.problem)
        _curate(item, cfg, out_dir, project_root, result)
    except SourceRejected as err:
        result.rejects.append(_reject(source, None, err.reason, err.detail))
    except Exception as err:  # a crash in one source must become a reject, not kill the stage (issue 3)
        logger.debug("source %s crashed", source, exc_info=True)
        result.rows.clear()
        result.rejects.append(_reject(source, None, "crash", f"{type(err).__name__}: {err}"))
    return result


def _source_caption(item: SourceItem) -> str | None:
    if item.caption is not None:
        return item.caption
    if item.caption_file is not None:
        try:
            return read_caption_file(item.caption_file)
        except CaptionError as err:
            raise SourceRejected("caption_invalid_utf8", str(err)) from None
    return None


def _source_audio(item: SourceItem, num_frames: int, fps: float) -> np.ndarray:
    """The source's audio at 16 kHz, fitted to ``num_frames / fps`` seconds."""
    if item.audio is None and not has_audio_stream(item.video):
        raise SourceRejected("no_audio", f"{item.video.name} has no audio stream and no sidecar audio file")
    from librosa.util.exceptions import ParameterError

    try:
        audio = read_audio(item.audio if item.audio is not None else item.video, AUDIO_SAMPLE_RATE)
    except MediaError as err:
        raise SourceRejected("audio_unreadable", str(err)) from None
    except ParameterError as err:  # librosa refuses to resample non-finite samples
        reason = "audio_not_finite" if "finite" in str(err) else "audio_unreadable"
        raise SourceRejected(reason, f"{err}") from None
    return fit_audio_to_frames(audio, num_frames, fps, AUDIO_SAMPLE_RATE)


def _detect_boxes(item: SourceItem, cfg: CurateConfig, frames: np.ndarray, indices: np.ndarray, scale: float):
    """Raw per-frame boxes ``(K, 4)`` (NaN = none) in analysis pixels, and the detector's name."""
    use_annotation = cfg.face_detector == "annotation" or (cfg.face_detector == "auto" and item.annotation)
    if use_annotation:
        if item.annotation is None:
            raise SourceRejected("no_annotation", "face_detector=annotation but the dataset has no annotation")
        return faces.annotation_boxes(item.annotation, indices, scale), "annotation"
    # faces smaller than min_face_size are rejected anyway: the cascade need not look for them
    boxes = faces.detect_faces_opencv(frames, every=cfg.face_every, min_size=0.8 * cfg.min_face_size)
    return boxes, "opencv"


def _can_link(item: SourceItem, probe, indices: np.ndarray, cfg: CurateConfig) -> bool:
    """Whether the source is exactly one clip at the target rate, with muxed H.264 + AAC, in an mp4."""
    import av

    if item.audio is not None or item.video.suffix.lower() != ".mp4":
        return False
    if probe.num_frames != cfg.num_frames or len(indices) != cfg.num_frames:
        return False
    if abs(probe.fps - cfg.fps) > 1e-3 or not np.array_equal(indices, np.arange(cfg.num_frames)):
        return False
    with av.open(str(item.video)) as container:
        if not container.streams.video or not container.streams.audio:
            return False
        codecs = (container.streams.video[0].codec_context.name, container.streams.audio[0].codec_context.name)
    return codecs == LINKABLE_CODECS


def _link_clip(src: Path, dst: Path, mode: str) -> Path:
    if mode == "reference":
        return src
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return dst
        except OSError:  # another file system: fall back to a copy
            pass
    shutil.copyfile(src, dst)
    return dst


def _reference_frame(
    clip: tuple[int, int], shot_index: int, shot_list: list[tuple[int, int]], found: np.ndarray, min_distance: int
) -> tuple[int, str] | None:
    """A frame with a detected face outside the clip: another shot first, else far enough in the same shot."""
    start, end = clip
    candidates = np.flatnonzero(found)
    best: tuple[int, str] | None = None
    best_distance = -1
    for frame in candidates:
        frame_shot = next(i for i, (s, e) in enumerate(shot_list) if s <= frame < e)
        distance = start - frame if frame < start else frame - (end - 1)
        if frame_shot != shot_index:
            # any other shot beats the same shot; among them the farthest
            key = distance + 10**9
            how = f"other shot {frame_shot}"
        elif distance >= min_distance:
            key = distance
            how = f"same shot, {distance} frames from the clip"
        else:
            continue
        if key > best_distance:
            best_distance, best = key, (int(frame), how)
    return best


@dataclass(frozen=True)
class _ShotSync:
    """The sync of one whole shot, and the per-frame features it was measured on (clip figures slice them)."""

    start: int
    estimate: SyncEstimate
    features: np.ndarray
    """The scorer's visual features, row 0 = the shot's first frame."""


@dataclass
class _Source:
    """One source read and analysed: what the checks of its clips share."""

    item: SourceItem
    caption: str | None
    probe: SourceProbe
    indices: np.ndarray
    """Source frame of each target-rate frame."""
    audio: np.ndarray
    frames: np.ndarray
    """Analysis frames (small), one per target-rate frame."""
    size: tuple[int, int]
    """(width, height) of the analysis frames."""
    shot_list: list[tuple[int, int]]
    windows: list[tuple[int, int]]
    """(shot index, start frame) of each candidate clip."""
    raw_boxes: np.ndarray
    """Per-frame face boxes in analysis pixels (NaN = none)."""
    scale: float
    """Analysis pixels per source pixel."""
    found: np.ndarray
    detector: str
    speaking: np.ndarray
    scorer_name: str
    scorer: SyncScorer
    min_confidence: float
    """The sync gate: ``curate.sync_min_confidence``, else the scorer's own default."""
    shot_sync: dict[int, _ShotSync]
    """Shot index -> the sync of the whole shot (only shots that hold a candidate clip)."""
    whole: bool
    """The source is exactly one clip (its id is the source id)."""
    linkable: bool
    full_size: FullSizeFrames


@dataclass
class _ClipCheck:
    """The checks of one clip: the first problem (reason, detail), else the figures of the accepted clip."""

    problem: str | None = None
    detail: str = ""
    boxes: np.ndarray | None = None
    speech_ratio: float = 0.0
    estimate: SyncEstimate | None = None
    """The sync the clip is judged by: its whole shot's."""
    clip_estimate: SyncEstimate | None = None
    """The clip's own figure (short clips give noisy offsets: recorded, not judged)."""
    brightness: float = 0.0
    sharpness: float = 0.0
    reference: Path | None = None
    reference_source: str | None = None
    reference_similarity: float | None = None
    """Cosine of dlib's embeddings of the cropped reference and the clip's face (None: not measured)."""


def _curate(item: SourceItem, cfg: CurateConfig, out_dir: Path, root: Path, result: SourceResult) -> None:
    """Curate one source into ``result``: a manifest row per accepted clip, a reject per rejected one.

    Raises:
        SourceRejected: a source-level reason, or ``no_usable_clip`` when every clip was rejected.
    """
    src = _read_source(item, cfg, result)
    clip_reasons: Counter[str] = Counter()
    for shot_index, start in src.windows:
        clip_id = item.source_id if src.whole else f"{item.source_id}_{start:06d}"
        check = _check_clip(src, cfg, shot_index, start, out_dir)
        if check.problem is not None:
            clip_reasons[check.problem] += 1
            result.rejects.append(_reject(result.source, clip_id, check.problem, check.detail))
            continue
        result.rows.append(_manifest_row(src, cfg, check, clip_id, shot_index, start, out_dir, root, result.source))
    if not result.rows:
        summary = ", ".join(f"{reason}={count}" for reason, count in sorted(clip_reasons.items()))
        raise SourceRejected("no_usable_clip", f"{sum(clip_reasons.values())} clip(s) rejected: {summary}")


def _read_source(item: SourceItem, cfg: CurateConfig, result: SourceResult) -> _Source:
    """Caption, stream, audio, shots, faces and speech of a source; fills the source figures of ``result``.

    Raises:
        SourceRejected: the source cannot give a clip (unreadable, too small, too short, silent, no long shot).
    """
    caption = _source_caption(item)
    probe, indices = _probe_checked(item, cfg, result)
    audio, rms = _checked_audio(item, cfg, len(indices))
    size, frames, shot_list, windows = _shot_windows(item, cfg, probe, indices)
    scale = size[0] / probe.width
    raw_boxes, detector = _detect_boxes(item, cfg, frames, indices, scale)
    found = np.isfinite(raw_boxes).all(axis=1)
    result.face_detector, result.face_hit_rate = detector, float(found.mean())
    vad = cfg.vad if cfg.vad != "auto" else ("energy" if item.synthetic else "silero")
    result.vad = vad
    if vad == "silero":
        speaking = speech.silero_frame_speech(audio, len(indices), cfg.vad_threshold, fps=cfg.fps)
    else:
        speaking = speech.energy_frame_speech(rms, cfg.energy_threshold_db, cfg.silence_rms)
    scorer_name = resolve_scorer_name(cfg.sync_scorer, item.synthetic)
    scorer = make_scorer(scorer_name, cfg.sync_search, weights=cfg.syncnet_weights)
    min_confidence = cfg.sync_min_confidence if cfg.sync_min_confidence is not None else scorer.min_confidence
    whole = len(windows) == 1 and windows[0][1] == 0 and len(indices) == cfg.num_frames
    full_size = FullSizeFrames(item.video, indices)
    shot_sync = {
        shot: _shot_sync(shot_list[shot], frames, raw_boxes, scale, audio, scorer, full_size, cfg)
        for shot in sorted({shot for shot, _ in windows})
        if found[shot_list[shot][0] : shot_list[shot][1]].any()
    }
    return _Source(
        item=item, caption=caption, probe=probe, indices=indices, audio=audio, frames=frames, size=size,
        shot_list=shot_list, windows=windows, raw_boxes=raw_boxes, scale=scale, found=found, detector=detector,
        speaking=speaking, scorer_name=scorer_name, scorer=scorer, min_confidence=min_confidence,
        shot_sync=shot_sync, whole=whole, linkable=whole and _can_link(item, probe, indices, cfg),
        full_size=full_size,
    )


def _shot_sync(
    shot: tuple[int, int],
    frames: np.ndarray,
    raw_boxes: np.ndarray,
    scale: float,
    audio: np.ndarray,
    scorer: SyncScorer,
    full_size: FullSizeFrames,
    cfg: CurateConfig,
) -> _ShotSync:
    """Sync over a whole shot: a 1.3 s clip is too short for any estimator to tell a shift from chance, a
    shot of several seconds is not. A face-track scorer gets the face cut from the full-size frames."""
    start, end = shot
    boxes = faces.fill_missing_boxes(raw_boxes[start:end])
    if scorer.uses_face_track:
        track = faces.face_track(full_size.get, np.arange(start, end), boxes / scale, cfg.sync_crop_size)
        view, boxes = track.crops, track.boxes
    else:
        view = frames[start:end]
    lo, hi = _audio_span(start, end, cfg.fps)
    features = scorer.visual(view, boxes)
    estimate = scorer.compare(features, audio[lo:hi], cfg.fps, AUDIO_SAMPLE_RATE)
    return _ShotSync(start=start, estimate=estimate, features=features)


def _probe_checked(item: SourceItem, cfg: CurateConfig, result: SourceResult) -> tuple[SourceProbe, np.ndarray]:
    """The stream's probe and its target-rate frame indices; sets ``result.seconds``."""
    try:
        probe = probe_source(item.video)
    except MediaError as err:
        raise SourceRejected("unreadable", str(err)) from None
    if min(probe.width, probe.height) < cfg.min_resolution:
        raise SourceRejected(
            "resolution_too_low", f"{probe.width}x{probe.height} < {cfg.min_resolution} px on the shorter side"
        )
    indices = resample_indices(probe.timestamps, probe.duration, cfg.fps)
    result.seconds = len(indices) / cfg.fps
    if len(indices) < cfg.num_frames:
        raise SourceRejected(
            "too_short", f"{len(indices)} frame(s) at {cfg.fps:g} fps < one clip of {cfg.num_frames} frames"
        )
    return probe, indices


def _checked_audio(item: SourceItem, cfg: CurateConfig, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The source's audio and its per-frame RMS; a silent source is rejected."""
    audio = _source_audio(item, num_frames, cfg.fps)
    if not np.all(np.isfinite(audio)):
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise SourceRejected("audio_not_finite", f"{bad} of {audio.size} audio samples are NaN or infinite")
    rms = speech.frame_rms(audio, num_frames, fps=cfg.fps)
    if speech.is_silent(rms, cfg.silence_rms):
        raise SourceRejected("silent_audio", f"loudest frame RMS {rms.max():.2e} < silence_rms {cfg.silence_rms:g}")
    return audio, rms


def _shot_windows(
    item: SourceItem, cfg: CurateConfig, probe: SourceProbe, indices: np.ndarray
) -> tuple[tuple[int, int], np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """``(size, frames, shots, windows)``: analysis frames, their shots and the clip windows inside shots
    (thinned evenly to ``cfg.max_clips_per_source``)."""
    size = analysis_size(probe.width, probe.height, cfg.analysis_size)
    try:
        frames = decode_frames(item.video, indices, size)
    except MediaError as err:
        raise SourceRejected("decode_failed", str(err)) from None
    shot_list = shots.detect_shots(frames, cfg.shot_threshold)
    windows = shots.cut_clips(shot_list, cfg.num_frames)
    if not windows:
        longest = max(end - start for start, end in shot_list)
        raise SourceRejected("no_shot_long_enough", f"longest shot {longest} frames < {cfg.num_frames}")
    if cfg.max_clips_per_source is not None and len(windows) > cfg.max_clips_per_source:
        keep = np.linspace(0, len(windows) - 1, cfg.max_clips_per_source).round().astype(int)
        windows = [windows[i] for i in keep]
    return size, frames, shot_list, windows


def _audio_span(start: int, end: int, fps: float) -> tuple[int, int]:
    """Audio sample range ``[lo, hi)`` of target-rate frames ``[start, end)``."""
    samples_per_frame = AUDIO_SAMPLE_RATE / fps
    return int(round(start * samples_per_frame)), int(round(end * samples_per_frame))


def _check_clip(src: _Source, cfg: CurateConfig, shot_index: int, start: int, out_dir: Path) -> _ClipCheck:
    """Face, speech, sync, quality and reference checks of the clip at ``start``, in that order."""
    end = start + cfg.num_frames
    clip_boxes = src.raw_boxes[start:end]
    problem = faces.face_problem(clip_boxes, src.size, cfg.min_face_fraction, cfg.min_face_size)
    if problem is not None:
        detail = f"{src.detector} found a face in {np.isfinite(clip_boxes).all(axis=1).mean():.0%} of the frames"
        return _ClipCheck(problem, detail)
    check = _ClipCheck(boxes=faces.fill_missing_boxes(clip_boxes), speech_ratio=float(src.speaking[start:end].mean()))
    if check.speech_ratio < cfg.min_speech_ratio:
        check.problem = "too_little_speech"
        check.detail = f"speech ratio {check.speech_ratio:.2f} < {cfg.min_speech_ratio:g}"
        return check
    check.estimate, check.clip_estimate = _clip_sync(src, cfg, shot_index, start)
    estimate, mine = check.estimate, check.clip_estimate
    span = f"over the {len(src.shot_sync[shot_index].features)}-frame shot (this clip alone: {mine.offset:+d})"
    if abs(estimate.offset) > cfg.sync_max_offset:
        check.problem = "sync_offset"
        check.detail = f"offset {estimate.offset:+d} frames {span}, |offset| > {cfg.sync_max_offset}"
        return check
    if estimate.confidence < src.min_confidence:
        check.problem = "sync_low_confidence"
        check.detail = f"confidence {estimate.confidence:.3f} {span} < {src.min_confidence:g}"
        return check
    frames = src.frames[start:end]
    check.brightness = bright = quality.brightness(frames)
    check.sharpness = sharp = quality.sharpness(frames, check.boxes)
    check.problem = quality.quality_problem(bright, sharp, cfg.min_brightness, cfg.max_brightness, cfg.min_sharpness)
    if check.problem is not None:
        check.detail = f"brightness {bright:.1f}, sharpness {sharp:.1f}"
        return check
    check.reference, check.reference_source = _reference(
        src.item, cfg, src.shot_list, shot_index, (start, end), src.found, src.raw_boxes / src.scale,
        src.full_size, out_dir,
    )
    if check.reference is None:
        check.problem, check.detail = "no_reference", "no face outside the clip: one shot, no distant segment"
        return check
    if src.item.reference_image is None:  # a crop from elsewhere in the source: is it the clip's person?
        check.reference_similarity = similarity = _reference_similarity(src, cfg, start, check.boxes, check.reference)
        if similarity is not None and similarity < cfg.reference_min_similarity:
            check.problem = "reference_other_person"
            check.detail = (
                f"face embedding of {check.reference.name} vs the clip: cosine {similarity:.3f} "
                f"< reference_min_similarity {cfg.reference_min_similarity:g}"
            )
    return check


def _reference_similarity(
    src: _Source, cfg: CurateConfig, start: int, boxes: np.ndarray, reference: Path
) -> float | None:
    """Cosine of dlib's face embeddings of a cropped reference and of the clip's middle frame (full size);
    None when the check is off or ``humo[faces]`` is not installed."""
    if cfg.reference_min_similarity is None or not landmarks.available():
        return None
    from PIL import Image

    middle = cfg.num_frames // 2
    frame = src.full_size.get(np.array([start + middle]))[0]
    box = boxes[middle] / src.scale
    clip_face = faces.face_crop(frame, box, margin=REFERENCE_MARGIN)
    left_top = np.maximum(np.floor(box[:2] - REFERENCE_MARGIN * (box[2:] - box[:2])), 0)  # as face_crop cuts
    inner = box - np.tile(left_top, 2)
    with Image.open(reference) as image:
        ref = np.asarray(image.convert("RGB"))
    return landmarks.cosine(landmarks.embed_face(ref), landmarks.embed_face(clip_face, inner))


def _clip_sync(src: _Source, cfg: CurateConfig, shot_index: int, start: int) -> tuple[SyncEstimate, SyncEstimate]:
    """(the shot's estimate, the clip's own): the clip's rows of the shot's features, compared alone."""
    shot = src.shot_sync[shot_index]
    if start == shot.start and len(shot.features) == cfg.num_frames:
        return shot.estimate, shot.estimate  # the clip is its whole shot
    lo, hi = _audio_span(start, start + cfg.num_frames, cfg.fps)
    rows = shot.features[start - shot.start : start - shot.start + cfg.num_frames]
    return shot.estimate, src.scorer.compare(rows, src.audio[lo:hi], cfg.fps, AUDIO_SAMPLE_RATE)


def _clip_video(src: _Source, cfg: CurateConfig, clip_id: str, start: int, out_dir: Path) -> tuple[Path, int, int]:
    """``(path, width, height)`` of the clip's video: the source linked as it is, else written to ``clips/``."""
    if src.linkable:
        video = _link_clip(src.item.video, out_dir / "clips" / f"{clip_id}.mp4", cfg.link_mode)
        return video, src.probe.width, src.probe.height
    end = start + cfg.num_frames
    full = src.full_size.get(np.arange(start, end))
    height, width = (full.shape[1] // 2) * 2, (full.shape[2] // 2) * 2
    full = full[:, :height, :width]
    lo, hi = _audio_span(start, end, cfg.fps)
    video = write_video(out_dir / "clips" / f"{clip_id}.mp4", full, cfg.fps, src.audio[lo:hi])
    return video, width, height


def _manifest_row(
    src: _Source,
    cfg: CurateConfig,
    check: _ClipCheck,
    clip_id: str,
    shot_index: int,
    start: int,
    out_dir: Path,
    root: Path,
    source: str,
) -> dict[str, Any]:
    """Caption and video of an accepted clip, and its manifest row (contract 2)."""
    item, boxes, estimate = src.item, check.boxes, check.estimate
    caption = src.caption
    if caption is None:
        caption = CAPTIONERS[cfg.captioner](src.frames[start : start + cfg.num_frames])
    video, width, height = _clip_video(src, cfg, clip_id, start, out_dir)
    to_clip = width / src.size[0]
    clip_boxes_px = np.clip(boxes * to_clip, 0, [width, height, width, height])
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return {
        "clip_id": clip_id,
        "source": source,
        "video": portable_path(video, root),
        "start_frame": int(start),
        "num_frames": cfg.num_frames,
        "fps": float(cfg.fps),
        "width": int(width),
        "height": int(height),
        "caption": caption,
        "has_caption": caption is not None,
        "reference_image": portable_path(check.reference, root),
        "reference_source": check.reference_source,
        "face_boxes": np.round(clip_boxes_px, 2).tolist(),
        "speech_ratio": check.speech_ratio,
        "sync_offset": int(estimate.offset),
        "sync_confidence": float(estimate.confidence),
        "sync_distance": float(estimate.distance),
        "sync_scorer": src.scorer_name,
        "sync_frames": int(len(src.shot_sync[shot_index].features)),
        "clip_sync_offset": int(check.clip_estimate.offset),
        "clip_sync_confidence": float(check.clip_estimate.confidence),
        "reference_similarity": check.reference_similarity,
        "split": item.split or cfg.folder_split,
        "identity_id": item.identity_id,
        "annotation": portable_path(item.annotation, root) if item.annotation else None,
        "source_id": item.source_id,
        "shot_index": int(shot_index),
        "brightness": check.brightness,
        "sharpness": check.sharpness,
        "face_size": float(np.median(sides) / min(src.size)),
        "face_detector": src.detector,
        "linked": bool(src.linkable),
    }


class FullSizeFrames:
    """Full-size frames of a source at target-rate positions, through one lazily opened reader."""

    def __init__(self, video: Path, indices: np.ndarray) -> None:
        self.video, self.indices = video, indices
        self._reader: FrameReader | None = None

    def get(self, positions: np.ndarray) -> np.ndarray:
        """``(K, H, W, 3)`` uint8 frames at target-rate ``positions`` ``(K,)``."""
        if self._reader is None:
            self._reader = FrameReader(self.video)
        return self._reader.get(self.indices[np.asarray(positions)])


def _reference(
    item: SourceItem,
    cfg: CurateConfig,
    shot_list: list[tuple[int, int]],
    shot_index: int,
    clip: tuple[int, int],
    found: np.ndarray,
    source_boxes: np.ndarray,
    full_size: FullSizeFrames,
    out_dir: Path,
) -> tuple[Path | None, str | None]:
    """(path, how) of the clip's reference image, or (None, None) when none can be taken.

    The dataset's reference image wins; otherwise a face crop (one png per chosen frame, shared by the
    clips that choose it) from another shot or a distant part of the same shot, never from the clip.
    """
    if item.reference_image is not None:
        if not item.reference_image.is_file():
            raise SourceRejected("reference_missing", f"{item.reference_image} listed by the dataset is missing")
        return item.reference_image, "dataset"
    choice = _reference_frame(clip, shot_index, shot_list, found, cfg.reference_min_distance)
    if choice is None:
        return None, None
    frame_index, how = choice
    path = out_dir / "references" / f"{item.source_id}_f{frame_index:06d}.png"
    if not path.is_file():
        from PIL import Image

        full = full_size.get(np.array([frame_index]))[0]
        crop = faces.face_crop(full, source_boxes[frame_index], margin=REFERENCE_MARGIN)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(path)
    return path, f"crop: frame {frame_index} ({how})"


# =====================================================================================================
# The stage
# =====================================================================================================


@dataclass(frozen=True)
class CurateSummary:
    """Counts of a curation run (also written to ``reports/curate/summary.json``)."""

    sources: int
    sources_with_clips: int
    rejected_sources: int
    clips: int
    rejected_clips: int
    source_seconds: float
    wall_seconds: float

    def __str__(self) -> str:
        return (
            f"curate: {self.sources} source(s) -> {self.clips} clip(s) from {self.sources_with_clips} source(s), "
            f"{self.rejected_sources} source(s) and {self.rejected_clips} clip(s) rejected; "
            f"{self.source_seconds:.1f} s of source in {self.wall_seconds:.1f} s "
            f"({self.source_seconds / max(self.wall_seconds, 1e-9):.1f}x real time)"
        )


def init_worker() -> None:
    """One thread per worker for torch (silero) and OpenCV: parallelism comes from the processes."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def curate_sources(
    items: list[SourceItem], cfg: CurateConfig, out_dir: Path, project_root: Path
) -> list[SourceResult]:
    """Run :func:`process_source` over ``items`` with ``cfg.workers`` processes and a progress bar."""
    from tqdm.auto import tqdm

    work = partial(process_source, cfg=cfg, out_dir=out_dir, project_root=project_root)
    bar = tqdm(total=len(items), desc="curate", unit="source", disable=None)
    results = []
    if cfg.workers == 1 or len(items) <= 1:
        init_worker()
        for item in items:
            results.append(work(item))
            bar.update()
    else:
        # forkserver, not fork: forking a process whose torch/OpenMP threads already run (a notebook, a test
        # session that used silero) can deadlock the children; spawn is the portable fallback
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["humo.data.curate"])
        with context.Pool(cfg.workers, initializer=init_worker) as pool:
            for result in pool.imap_unordered(work, items, chunksize=CHUNKSIZE):
                results.append(result)
                bar.update()
    bar.close()
    return sorted(results, key=lambda r: r.source)


def check_accounting(items: list[SourceItem], results: list[SourceResult], project_root: Path) -> None:
    """Every source is in exactly one of: the manifest (via its clips) or the source-level rejects.

    Raises:
        RuntimeError: a source is missing from both or present in both (a bug in curation).
    """
    sources = {portable_path(item.video, project_root) for item in items}
    with_clips = {row["source"] for r in results for row in r.rows}
    rejected = {rej["source"] for r in results for rej in r.rejects if rej["clip"] is None}
    if with_clips & rejected or (with_clips | rejected) != sources or len(with_clips) + len(rejected) != len(items):
        raise RuntimeError(
            f"curation lost track of sources: {len(items)} in, {len(with_clips)} with clips, {len(rejected)} rejected"
        )


def check_scorer(cfg: CurateConfig) -> None:
    """Fail before any source is read when the configured sync scorer cannot run on this machine."""
    if cfg.sync_scorer == "lips" and not landmarks.available():
        raise landmarks.FaceModelsMissing(f"curate.sync_scorer=lips needs dlib's models; {landmarks.INSTALL_HINT}")
    if cfg.sync_scorer == "syncnet":
        make_scorer(cfg.sync_scorer, cfg.sync_search, weights=cfg.syncnet_weights)


def prepare(cfg: CurateConfig, paths: PathsConfig) -> tuple[list[SourceItem], Path]:
    """Read the source list and clear the clips of a previous run; returns ``(items, out_dir)``.

    Raises:
        FileNotFoundError: the source folder or its index is missing, SyncNet's weights file is missing, or
            ``sync_scorer: lips`` without ``humo[faces]`` (checked once here, not as a crash per source).
        ValueError: ``sync_scorer: syncnet`` without ``syncnet_weights``.
    """
    check_scorer(cfg)
    source_dir = cfg.source_dir if cfg.source_dir is not None else paths.raw
    items = read_sources(cfg.source_format, source_dir, cfg.limit)
    out_dir = paths.stage_dir("curate")
    for stale in (out_dir / "clips", out_dir / "references"):
        if stale.exists():
            shutil.rmtree(stale)
    out_dir.mkdir(parents=True, exist_ok=True)
    return items, out_dir.absolute()


def finish(
    items: list[SourceItem], results: list[SourceResult], paths: PathsConfig, project_root: Path, started: float
) -> CurateSummary:
    """Check that every source is accounted for, then write manifest, rejects and report.

    Args:
        items: the sources :func:`prepare` listed.
        results: one :class:`SourceResult` per source, in any order.
        paths: the ``paths`` section.
        project_root: manifest paths are relative to it.
        started: ``time.perf_counter()`` when the run began (for the throughput figure).
    """
    results = sorted(results, key=lambda r: r.source)
    check_accounting(items, results, project_root)
    rows = [row for r in results for row in r.rows]
    rejects = [rej for r in results for rej in r.rejects]
    write_manifest(rows, paths.manifest)
    write_rejects(rejects, paths.stage_dir("curate") / "rejects.jsonl")

    summary = CurateSummary(
        sources=len(items),
        sources_with_clips=sum(1 for r in results if r.rows),
        rejected_sources=sum(1 for rej in rejects if rej["clip"] is None),
        clips=len(rows),
        rejected_clips=sum(1 for rej in rejects if rej["clip"] is not None),
        source_seconds=float(sum(r.seconds for r in results)),
        wall_seconds=time.perf_counter() - started,
    )
    write_report(paths.report_dir("curate"), summary, results, rows, rejects)
    logger.info("%s", summary)
    return summary


def run(cfg: CurateConfig, paths: PathsConfig, project_root: Path | None = None) -> CurateSummary:
    """The ``curate`` stage: read the sources, curate them in parallel, write manifest, rejects and report.

    The three steps (:func:`prepare`, :func:`curate_sources`, :func:`finish`) are public so that the curation
    flow can fan :func:`process_source` out over a Dask cluster instead of this machine's process pool.

    Args:
        cfg: the ``curate`` section.
        paths: the ``paths`` section (``raw`` is read unless ``cfg.source_dir`` is set; outputs go to
            ``artifacts/curate`` and ``reports/curate``).
        project_root: manifest paths are relative to it; default the current folder.

    Returns:
        A :class:`CurateSummary`.

    Raises:
        FileNotFoundError: the source folder or its index is missing, or the sync scorer cannot run here.
    """
    started = time.perf_counter()
    root = (Path(project_root) if project_root is not None else Path.cwd()).absolute()
    items, out_dir = prepare(cfg, paths)
    results = curate_sources(items, cfg, out_dir, root)
    return finish(items, results, paths, root, started)


def write_report(
    report_dir: Path, summary: CurateSummary, results: list[SourceResult], rows: list[dict], rejects: list[dict]
) -> None:
    """``summary.json`` (counts per reason, face detection figures) and ``histograms.png`` of the clip figures."""
    report_dir.mkdir(parents=True, exist_ok=True)
    detectors = Counter(r.face_detector for r in results if r.face_detector)
    opencv_rates = [r.face_hit_rate for r in results if r.face_detector == "opencv" and r.face_hit_rate is not None]
    report = {
        **summary.__dict__,
        "throughput_source_seconds_per_second": summary.source_seconds / max(summary.wall_seconds, 1e-9),
        "source_reject_reasons": dict(sorted(Counter(r["reason"] for r in rejects if r["clip"] is None).items())),
        "clip_reject_reasons": dict(sorted(Counter(r["reason"] for r in rejects if r["clip"] is not None).items())),
        "face_detectors": dict(detectors),
        "vads": dict(Counter(r.vad for r in results if r.vad)),
        "opencv_face_hit_rate": float(np.mean(opencv_rates)) if opencv_rates else None,
        "linked_clips": sum(1 for row in rows if row["linked"]),
        "clips_with_caption": sum(1 for row in rows if row["has_caption"]),
        "splits": dict(Counter(row["split"] for row in rows)),
        "sync_scorers": dict(Counter(row["sync_scorer"] for row in rows)),
        "reference_similarity_min": min(
            (row["reference_similarity"] for row in rows if row["reference_similarity"] is not None), default=None
        ),
    }
    (report_dir / "summary.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _histograms(rows, report_dir / "histograms.png")


def _histograms(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ("speech_ratio", "sync_offset", "sync_confidence", "face_size", "brightness", "sharpness")
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, column in zip(axes.reshape(-1), columns, strict=True):
        values = [row[column] for row in rows]
        if values:
            ax.hist(values, bins=30, color="tab:blue")
        ax.set_title(f"{column} (n={len(values)})")
    fig.suptitle("curated clips")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
