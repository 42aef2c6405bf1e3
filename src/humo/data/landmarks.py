"""Pretrained face models that install offline: dlib's 68-point landmarks and its 128-d face embeddings.

Installed with the ``faces`` extra (``pip install 'humo[faces]'``): ``dlib-bin`` (prebuilt dlib wheels, Boost
Software License) and ``face-recognition-models`` (MIT package, about 100 MB as an sdist; ~20 s to install on
our 2-core machine). That package ships four model files, found here without importing it (its
``__init__`` needs ``pkg_resources``, which recent virtual environments lack):

* ``shape_predictor_68_face_landmarks.dat``: 68 landmarks of the iBUG 300-W scheme (points 48-67 are the
  lips, 60-67 the inner lip). Trained by dlib's author on the iBUG 300-W data, whose terms do **not** allow
  commercial use: check before you ship a product that runs it;
* ``dlib_face_recognition_resnet_model_v1.dat``: a ResNet giving 128-d face descriptors (same person:
  Euclidean distance below about 0.6), released by dlib's author into the public domain;
* ``shape_predictor_5_face_landmarks.dat`` and ``mmod_human_face_detector.dat`` (not used here).

Everything else in humo keeps a model-free path (:mod:`humo.data.sync`'s mouth scorers, the Haar cascade),
so a machine without the extra still curates and evaluates; :func:`available` says which path runs.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

MODELS_PACKAGE = "face_recognition_models"
LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
EMBEDDING_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install 'humo[faces]' (dlib-bin + face-recognition-models)"
NUM_LANDMARKS = 68
EMBEDDING_DIM = 128


class FaceModelsMissing(FileNotFoundError):
    """dlib or its model files are not installed (a missing file, to callers); the message names the fix."""


def available() -> bool:
    """Whether dlib and the model package are installed (nothing is imported or loaded)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dlib", MODELS_PACKAGE))


def models_dir() -> Path:
    """Folder holding the ``.dat`` files of ``face-recognition-models``.

    Raises:
        FaceModelsMissing: the package is not installed.
    """
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing(f"the face models are not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _dlib():
    try:
        import dlib
    except ImportError:
        raise FaceModelsMissing(f"dlib is not installed; {INSTALL_HINT}") from None
    return dlib


def _model_file(name: str) -> str:
    path = models_dir() / name
    if not path.is_file():
        raise FaceModelsMissing(f"{path} is missing; reinstall with {INSTALL_HINT}")
    return str(path)


@functools.cache
def _detector():
    return _dlib().get_frontal_face_detector()


@functools.cache
def _predictor():
    return _dlib().shape_predictor(_model_file(LANDMARKS_FILE))


@functools.cache
def _recogniser():
    return _dlib().face_recognition_model_v1(_model_file(EMBEDDING_FILE))


def _rectangle(box: np.ndarray):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return _dlib().rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


def detect_faces(frames: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """dlib's HOG face box per frame (the largest), or ``fallback``'s row where it finds none.

    The landmark model was trained on this detector's boxes, so its points are steadier on them than on
    another detector's (the Haar boxes are looser and jitter more).

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        fallback: ``(F, 4)`` boxes ``[x0, y0, x1, y1]`` to use where dlib finds no face.

    Returns:
        ``(F, 4)`` float64 boxes.
    """
    detector = _detector()
    boxes = np.asarray(fallback, dtype=np.float64).copy()
    for index, frame in enumerate(frames):
        found = detector(np.ascontiguousarray(frame), 0)
        if found:
            best = max(found, key=lambda r: r.width() * r.height())
            boxes[index] = [best.left(), best.top(), best.right(), best.bottom()]
    return boxes


def _shapes(frames: np.ndarray, boxes: np.ndarray):
    """``(frame, landmarks)`` of each frame: dlib's shape of the face in its box."""
    predictor = _predictor()
    for frame, box in zip(frames, boxes, strict=True):
        frame = np.ascontiguousarray(frame)
        yield frame, predictor(frame, _rectangle(box))


def face_landmarks(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The 68 landmarks of the face in ``boxes`` of each frame.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        boxes: ``(F, 4)`` face boxes (pixels).

    Returns:
        ``(F, 68, 2)`` float64 ``(x, y)`` pixels.
    """
    points = np.empty((len(frames), NUM_LANDMARKS, 2), dtype=np.float64)
    for index, (_, shape) in enumerate(_shapes(frames, boxes)):
        points[index] = [(shape.part(k).x, shape.part(k).y) for k in range(NUM_LANDMARKS)]
    return points


def face_embeddings(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """dlib's 128-d face descriptor of the face in ``boxes`` of each frame, L2-normalised.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        boxes: ``(F, 4)`` face boxes (pixels).

    Returns:
        ``(F, 128)`` float64 unit vectors (cosine similarity = dot product).
    """
    recogniser = _recogniser()
    out = np.empty((len(frames), EMBEDDING_DIM), dtype=np.float64)
    for index, (frame, shape) in enumerate(_shapes(frames, boxes)):
        out[index] = np.asarray(recogniser.compute_face_descriptor(frame, shape))
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def embed_face(image: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
    """The 128-d unit embedding of the largest face dlib finds in an RGB image ``(H, W, 3)``; where it finds
    none, of the face in ``box`` (default: the whole image)."""
    image = np.ascontiguousarray(np.asarray(image)[..., :3])
    height, width = image.shape[:2]
    fallback = np.asarray(box if box is not None else [0, 0, width, height], dtype=np.float64)[None]
    found = detect_faces(image[None], fallback=fallback)
    return face_embeddings(image[None], found)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (or of two sums of them)."""
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
