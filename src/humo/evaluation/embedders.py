"""Pluggable real evaluator models (provenance ``model``), loaded from local folders only.

The paper's subject-consistency figures (ID-Cur, ID-Glink, CLIP-I, DINO-I) embed the reference and each
generated frame's face crop and average their cosine similarity; its text alignment (TVA) comes from a
video reward model. Neither is available offline here, so :mod:`humo.evaluation.metrics` has exact SynthTalk
defaults; this module is how a user with the weights plugs the real ones in:

* :class:`ImageEmbedder` is the protocol (``(N, H, W, 3)`` uint8 -> ``(N, D)``); any face model fits it,
  e.g. an ArcFace / CurricularFace ONNX model wrapped in a few lines with ``onnxruntime``;
* :class:`HFImageEmbedder` loads a CLIP or DINO(v2) image model saved with ``save_pretrained`` (CLIP-I / DINO-I);
* :class:`ClipTextScorer` loads a CLIP model and scores a caption against the frames (a CLIP-score stand-in for TVA).

Nothing here downloads: folders are opened with ``local_files_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from humo.data.faces import face_crop
from humo.evaluation.metrics import cosine_similarities

logger = logging.getLogger(__name__)


@runtime_checkable
class ImageEmbedder(Protocol):
    """Images -> embeddings."""

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """``N`` images ``(h, w, 3)`` uint8 (any sizes) -> ``(N, D)`` float embeddings."""
        ...


@runtime_checkable
class TextVideoScorer(Protocol):
    """A caption and frames -> one alignment score (higher is better)."""

    def __call__(self, caption: str, frames: np.ndarray) -> float:
        """``caption`` and ``(F, H, W, 3)`` uint8 frames -> a score."""
        ...


def _check_folder(path: str | Path, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved {what} (no config.json); give a save_pretrained folder")
    return folder


class HFImageEmbedder:
    """A CLIP vision / DINO(v2) image model from a local transformers folder (CLIP-I, DINO-I).

    CLIP models give their projected image features; other models their pooled output (DINOv2: the CLS token).
    """

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoImageProcessor, AutoModel

        folder = _check_folder(path, "image model")
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.name = folder.name

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """See :class:`ImageEmbedder`."""
        import torch

        inputs = self.processor(images=[np.asarray(image) for image in images], return_tensors="pt")
        with torch.no_grad():
            if hasattr(self.model, "get_image_features"):
                features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
                if not isinstance(features, torch.Tensor):  # some versions return a model output
                    features = features.pooler_output
            else:
                output = self.model(pixel_values=inputs["pixel_values"])
                pooled = getattr(output, "pooler_output", None)
                features = pooled if pooled is not None else output.last_hidden_state[:, 0]
        return features.float().numpy()


class ClipTextScorer:
    """Mean cosine similarity between a caption and each frame under a local CLIP model (a TVA stand-in)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        folder = _check_folder(path, "CLIP model")
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def __call__(self, caption: str, frames: np.ndarray) -> float:
        """See :class:`TextVideoScorer`."""
        import torch

        inputs = self.processor(
            text=[caption],
            images=list(np.asarray(frames)),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
        )
        with torch.no_grad():
            text = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            image = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        if not isinstance(text, torch.Tensor):
            text, image = text.pooler_output, image.pooler_output
        return float(cosine_similarities(text[0].numpy(), image.numpy()).mean())


def embedding_similarity(
    embedder: ImageEmbedder,
    reference: np.ndarray,
    reference_box: np.ndarray | None,
    frames: np.ndarray,
    face_boxes: np.ndarray | None,
    margin: float = 0.25,
) -> dict[str, float]:
    """Subject consistency with a real embedder: cosine of each frame's face crop with the reference's.

    Args:
        embedder: any :class:`ImageEmbedder` (ArcFace for ID, CLIP / DINO for CLIP-I / DINO-I).
        reference: ``(H, W, 3)`` uint8 reference image.
        reference_box: ``(4,)`` its face box, or ``None`` to embed the whole image (CLIP-I / DINO-I on objects).
        frames: ``(F, H, W, 3)`` uint8 frames.
        face_boxes: ``(F, 4)`` face boxes (NaN rows: no face, skipped), or ``None`` for whole frames.
        margin: share of the box size added around each face crop.

    Returns:
        ``embedding_similarity``: mean cosine over frames with a face (NaN when none has one).
    """
    ref_crop = reference if reference_box is None else face_crop(reference, np.asarray(reference_box), margin)
    if face_boxes is None:
        crops = list(np.asarray(frames))
    else:
        boxes = np.asarray(face_boxes, dtype=np.float64)
        crops = [face_crop(frame, box, margin) for frame, box in zip(frames, boxes, strict=True) if np.isfinite(box).all()]
    if not crops:
        return {"embedding_similarity": float("nan")}
    embeddings = embedder([ref_crop, *crops])
    return {"embedding_similarity": float(cosine_similarities(embeddings[0], embeddings[1:]).mean())}
