"""Real-model plug-ins (provenance "model") with tiny random CLIP and DINOv2 folders saved locally."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from humo.evaluation.embedders import (
    ClipTextScorer,
    HFImageEmbedder,
    ImageEmbedder,
    TextVideoScorer,
    embedding_similarity,
)

SIZE = 32


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        Dinov2Config,
        Dinov2Model,
    )

    root = tmp_path_factory.mktemp("evaluators")
    tiny = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    clip = CLIPConfig(
        text_config={**tiny, "vocab_size": 300, "max_position_embeddings": 32},
        vision_config={**tiny, "image_size": SIZE, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(clip).save_pretrained(root / "clip")
    (root / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    crop = {"height": SIZE, "width": SIZE}
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=crop),
        tokenizer=CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")),
    ).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(**tiny, image_size=SIZE, patch_size=8)).save_pretrained(root / "dino")
    BitImageProcessor(size={"shortest_edge": SIZE}, crop_size=crop).save_pretrained(root / "dino")
    return {"clip": root / "clip", "dino": root / "dino"}


@pytest.mark.parametrize("kind, dim", [("clip", 16), ("dino", 32)])
def test_image_embedders_compare_face_crops(model_dirs, truth_clips, kind: str, dim: int) -> None:
    embedder = HFImageEmbedder(model_dirs[kind])
    assert isinstance(embedder, ImageEmbedder)
    clip = truth_clips[0]
    assert embedder([clip.reference, clip.frames[0]]).shape == (2, dim)
    same = embedding_similarity(embedder, clip.frames[0], clip.face_boxes[0], clip.frames[:1], clip.face_boxes[:1])
    assert math.isclose(same["embedding_similarity"], 1.0, abs_tol=1e-5)
    other = embedding_similarity(embedder, clip.reference, clip.reference_box, clip.frames, clip.face_boxes)
    assert -1.0 <= other["embedding_similarity"] < 1.0 - 1e-4
    boxes = clip.face_boxes.copy()
    boxes[1:] = np.nan
    assert math.isclose(
        embedding_similarity(embedder, clip.frames[0], clip.face_boxes[0], clip.frames, boxes)["embedding_similarity"],
        1.0,
        abs_tol=1e-5,
    )
    boxes[:] = np.nan
    assert math.isnan(embedding_similarity(embedder, clip.reference, None, clip.frames, boxes)["embedding_similarity"])


def test_clip_text_scorer_scores_a_caption_against_frames(model_dirs, truth_clips) -> None:
    scorer = ClipTextScorer(model_dirs["clip"])
    assert isinstance(scorer, TextVideoScorer)
    clip = truth_clips[0]
    score = scorer(clip.caption, clip.frames[:4])
    assert -1.0 <= score <= 1.0 and score == scorer(clip.caption, clip.frames[:4])
    assert score != scorer(clip.caption, 255 - clip.frames[:4])


def test_missing_model_folder_names_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        HFImageEmbedder(tmp_path)


def test_evaluate_scores_with_configured_real_models(model_dirs, truth_clips, params_path) -> None:
    from humo.config import load_params
    from humo.evaluation.evalset import EvalCase
    from humo.evaluation.evaluate import Evaluators, score_clip

    cfg = load_params(
        params_path,
        [f"evaluate.image_embedder={model_dirs['dino']}", f"evaluate.text_scorer={model_dirs['clip']}",
         "evaluate.sync_scorer=motion"],
    ).evaluate
    clip = truth_clips[0]
    truth = clip.truth
    case = EvalCase(
        case_id="c", clip_id=truth["clip_id"], identity_id=truth["identity_id"], caption=clip.caption,
        reference="-", audio="-", truth_video="-", num_frames=len(clip.frames), fps=clip.fps,
        height=clip.frames.shape[1], width=clip.frames.shape[2], face_boxes=truth["face_box"],
        mouth_boxes=truth["mouth_box"], reference_face_box=truth["reference"]["face_box"],
        identity=truth["identity"], scene={},
    )
    figures, _ = score_clip(clip.frames, clip.audio, clip.reference, case, cfg, Evaluators.from_config(cfg))
    assert figures["sync_model_offset"] == 0 and figures["sync_model_confidence_at_zero"] > 0.5
    assert -1.0 <= figures["embedding_similarity"] <= 1.0 and -1.0 <= figures["text_model_score"] <= 1.0
    plain, _ = score_clip(clip.frames, clip.audio, clip.reference, case, cfg)
    assert "embedding_similarity" not in plain and plain["identity_similarity"] == figures["identity_similarity"]
