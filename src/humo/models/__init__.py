"""humo.models: the HuMo DiT (``transformer``), its named sizes (``presets``) and checkpoint loading (``convert``)."""

from __future__ import annotations

from humo.models.convert import (
    DIFFUSERS_TO_HUMO,
    NEW_MODULE_PREFIXES,
    diffusers_to_humo_state_dict,
    humo_to_diffusers_state_dict,
    load_humo_checkpoint,
)
from humo.models.presets import PRESETS, HumoDiTConfig, get_preset
from humo.models.transformer import HumoContext, HumoTransformer3D, HumoTransformerOutput

__all__ = [
    "DIFFUSERS_TO_HUMO",
    "NEW_MODULE_PREFIXES",
    "PRESETS",
    "HumoContext",
    "HumoDiTConfig",
    "HumoTransformer3D",
    "HumoTransformerOutput",
    "diffusers_to_humo_state_dict",
    "get_preset",
    "humo_to_diffusers_state_dict",
    "load_humo_checkpoint",
]
