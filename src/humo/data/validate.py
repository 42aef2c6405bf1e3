"""The ``validate`` stage: a Great Expectations (1.x) suite over the curated manifest.

The manifest is loaded into pandas, a few columns are derived from the files it points at (``check_*``: does
the clip exist, how many frames and what rate does it really have, does it carry audio, does the reference
image exist), and one expectation suite checks schema, value ranges, uniqueness, file existence, fps, frame
counts, reference presence and sync ranges. GX runs on an ephemeral context (nothing is written to a
``gx/`` folder); the results go to ``reports/validate/validation.json`` and a small self-contained
``validation.html``. A failed expectation raises :class:`ValidationFailed`, whose message names every failed
expectation and column, so ``humo validate`` exits non-zero and ``dvc repro`` stops before training.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from humo.config import CurateConfig, PathsConfig, ValidateConfig
from humo.data.manifest import MANIFEST_COLUMNS, read_manifest, resolve_path

logger = logging.getLogger(__name__)

SUITE_NAME = "curated_manifest"
FPS_TOLERANCE = 0.01
"""Largest accepted difference between a clip's container frame rate and ``curate.fps``."""
REQUIRED_NOT_NULL = (
    "clip_id", "source", "video", "start_frame", "num_frames", "fps", "width", "height", "has_caption",
    "reference_image", "reference_source", "face_boxes", "speech_ratio", "sync_offset", "sync_confidence", "split",
)  # fmt: skip
CHECK_COLUMNS = (
    "check_video_exists", "check_reference_exists", "check_reference_not_clip", "check_caption_consistent",
    "check_face_boxes", "check_video_frames", "check_video_fps", "check_video_has_audio",
)  # fmt: skip
"""Columns derived from the files before validation (see :func:`derive_checks`)."""


class ValidationFailed(ValueError):
    """The manifest failed at least one expectation; the message names each one."""


@dataclass(frozen=True)
class ValidationSummary:
    """Outcome of a validation run."""

    success: bool
    evaluated: int
    failed: list[str]
    rows: int

    def __str__(self) -> str:
        state = "passed" if self.success else f"FAILED {len(self.failed)}"
        return f"validate: {self.rows} clip(s), {self.evaluated} expectation(s), {state}"


def _probe_clip(path: Path) -> tuple[int, float, bool]:
    """(frames, fps, has audio) of a clip; (-1, -1.0, False) when it cannot be opened."""
    import decord

    from humo.data.media import has_audio_stream

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        return len(reader), float(reader.get_avg_fps()), has_audio_stream(path)
    except (decord.DECORDError, RuntimeError):
        return -1, -1.0, False


def derive_checks(frame, root: Path, check_files: bool):
    """The manifest with the ``check_*`` columns the suite tests (:data:`CHECK_COLUMNS`).

    Args:
        frame: the manifest DataFrame.
        root: project root that relative manifest paths start from.
        check_files: open every clip (frames, fps, audio); when False those columns copy the manifest's
            own values so only existence is checked.
    """
    frame = frame.copy()

    def exists(value: Any) -> bool:
        return isinstance(value, str) and bool(value) and resolve_path(value, root).is_file()

    frame["check_video_exists"] = [exists(v) for v in frame["video"]]
    frame["check_reference_exists"] = [exists(v) for v in frame["reference_image"]]
    frame["check_reference_not_clip"] = [ref != vid for ref, vid in zip(frame["reference_image"], frame["video"])]
    frame["check_caption_consistent"] = [
        bool(has) == (isinstance(cap, str) and bool(cap)) for has, cap in zip(frame["has_caption"], frame["caption"])
    ]
    frame["check_face_boxes"] = [
        len(boxes) if boxes is not None and all(len(b) == 4 for b in boxes) else -1 for boxes in frame["face_boxes"]
    ]
    if check_files:
        probes = [
            _probe_clip(resolve_path(v, root)) if ok else (-1, -1.0, False)
            for v, ok in zip(frame["video"], frame["check_video_exists"])
        ]
    else:
        probes = [(int(n), float(f), True) for n, f in zip(frame["num_frames"], frame["fps"])]
    frame["check_video_frames"] = np.array([p[0] for p in probes], dtype=np.int64)
    frame["check_video_fps"] = np.array([p[1] for p in probes], dtype=np.float64)
    frame["check_video_has_audio"] = [p[2] for p in probes]
    return frame


def build_expectations(curate: CurateConfig, cfg: ValidateConfig) -> list:
    """The expectations of the suite, in the order they are reported."""
    import great_expectations as gx

    e = gx.expectations
    expectations: list = [
        e.ExpectTableColumnsToMatchSet(column_set=[*MANIFEST_COLUMNS, *CHECK_COLUMNS], exact_match=True),
        e.ExpectTableRowCountToBeBetween(min_value=cfg.min_clips),
        e.ExpectColumnValuesToBeUnique(column="clip_id"),
        e.ExpectCompoundColumnsToBeUnique(column_list=["source", "start_frame"]),
    ]
    expectations += [e.ExpectColumnValuesToNotBeNull(column=column) for column in REQUIRED_NOT_NULL]
    expectations += [
        e.ExpectColumnValuesToBeInSet(column="num_frames", value_set=[curate.num_frames]),
        e.ExpectColumnValuesToBeInSet(column="fps", value_set=[float(curate.fps)]),
        e.ExpectColumnValuesToBeBetween(column="start_frame", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="width", min_value=curate.min_resolution),
        e.ExpectColumnValuesToBeBetween(column="height", min_value=curate.min_resolution),
        e.ExpectColumnValuesToBeBetween(column="speech_ratio", min_value=curate.min_speech_ratio, max_value=1.0),
        e.ExpectColumnValuesToBeBetween(
            column="sync_offset", min_value=-curate.sync_max_offset, max_value=curate.sync_max_offset
        ),
        e.ExpectColumnValuesToBeBetween(
            column="sync_confidence", min_value=cfg.min_sync_confidence, max_value=cfg.max_sync_confidence
        ),
        e.ExpectColumnValuesToBeBetween(column="face_size", min_value=curate.min_face_size, max_value=1.0),
        e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "heldout"]),
        e.ExpectColumnValuesToBeInSet(column="check_video_exists", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="check_reference_exists", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="check_reference_not_clip", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="check_caption_consistent", value_set=[True]),
        e.ExpectColumnPairValuesToBeEqual(column_A="num_frames", column_B="check_face_boxes"),
        e.ExpectColumnPairValuesToBeEqual(column_A="num_frames", column_B="check_video_frames"),
        e.ExpectColumnValuesToBeBetween(
            column="check_video_fps", min_value=curate.fps - FPS_TOLERANCE, max_value=curate.fps + FPS_TOLERANCE
        ),
        e.ExpectColumnValuesToBeInSet(column="check_video_has_audio", value_set=[True]),
    ]
    return expectations


def validate_manifest(frame, curate: CurateConfig, cfg: ValidateConfig):
    """Run the suite on a manifest that already has its ``check_*`` columns.

    Returns:
        GX's ``ExpectationSuiteValidationResult``.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("curate").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("all_clips")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for expectation in build_expectations(curate, cfg):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame})


def describe_failure(result: Any) -> str:
    """One line per failed expectation: its type, column(s) and what was found."""
    lines = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column_set")}
        found = item.result or {}
        evidence = (
            f"{found.get('unexpected_count')} unexpected, e.g. {found.get('partial_unexpected_list', [])[:3]}"
            if "unexpected_count" in found
            else f"observed {found.get('observed_value')!r}"
        )
        lines.append(f"{config.type} {kwargs}: {evidence}")
    return "\n".join(lines)


def _html(result: Any, summary: ValidationSummary) -> str:
    rows = []
    for item in result.results:
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        found = item.result or {}
        detail = found.get("unexpected_count", found.get("observed_value", ""))
        colour = "#d4f4d4" if item.success else "#f8d0d0"
        rows.append(
            f'<tr style="background:{colour}"><td>{"pass" if item.success else "FAIL"}</td>'
            f"<td>{html.escape(config.type)}</td><td><code>{html.escape(json.dumps(kwargs, default=str))}</code></td>"
            f"<td>{html.escape(str(detail))}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>manifest validation</title></head><body>"
        f"<h1>Manifest validation: {'passed' if summary.success else 'FAILED'}</h1>"
        f"<p>{summary.rows} clip(s), {summary.evaluated} expectation(s), {len(summary.failed)} failed "
        f"(suite <code>{SUITE_NAME}</code>, Great Expectations).</p>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<tr><th>result</th><th>expectation</th><th>arguments</th><th>unexpected / observed</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )


def run(
    cfg: ValidateConfig, curate: CurateConfig, paths: PathsConfig, project_root: Path | None = None
) -> ValidationSummary:
    """The ``validate`` stage: check ``artifacts/curate/manifest.parquet``, write the reports, fail loudly.

    Args:
        cfg: the ``validation`` section.
        curate: the ``curate`` section (frame count, fps and thresholds the clips must meet).
        paths: the ``paths`` section.
        project_root: root of relative manifest paths; default the current folder.

    Returns:
        A :class:`ValidationSummary` (only when every expectation passed).

    Raises:
        FileNotFoundError: no manifest (run ``humo curate`` first).
        ValidationFailed: an expectation failed; the message names it. The reports are written first.
    """
    root = Path(project_root) if project_root is not None else Path.cwd()
    manifest = read_manifest(paths.manifest)
    frame = derive_checks(manifest, root, cfg.check_files)
    result = validate_manifest(frame, curate, cfg)
    failed = [item.expectation_config.type for item in result.results if not item.success]
    summary = ValidationSummary(success=bool(result.success), evaluated=len(result.results), failed=failed, rows=len(frame))
    report_dir = paths.report_dir("validate")
    report_dir.mkdir(parents=True, exist_ok=True)
    payload = {"success": summary.success, "rows": summary.rows, "evaluated": summary.evaluated,
               "failed": failed, "result": result.to_json_dict()}  # fmt: skip
    (report_dir / "validation.json").write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    (report_dir / "validation.html").write_text(_html(result, summary), encoding="utf-8")
    if not summary.success:
        raise ValidationFailed(
            f"manifest failed {len(failed)} of {summary.evaluated} expectation(s) "
            f"(report: {report_dir / 'validation.html'}):\n{describe_failure(result)}"
        )
    logger.info("%s", summary)
    return summary
