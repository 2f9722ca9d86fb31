"""Pretrained audio encoders behind one interface (:class:`AudioEncoder`): raw mono audio ``[B, N]`` at the data's
rate -> frame embeddings ``[B, D, T_e]``, with a declared width ``dim`` and ``frame_hop``.

A model holds one as its ``audio_encoder`` (built here from its ``model.encoder`` node, :func:`build_encoder`):
``model.encoder._target_`` names an :class:`AudioEncoder` (the families: ``sed.models.encoders.ast.ASTEncoder``,
``sed.models.encoders.published.BEATsEncoder``, ``...published.ATSTFrameEncoder``) or any module of the user's
that declares ``dim``, ``sample_rate`` and ``frame_hop`` (wrapped in :class:`ModuleEncoder`). docs/encoders.md
tells where the published checkpoints come from.
"""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sed.models.encoders.base import INTERFACE_KEYS, AudioEncoder, ModuleEncoder, audio_fingerprint
from sed.models.encoders.model_contract import (
    audio_encoder,
    model_inputs,
    models_inputs,
    optimizer_param_groups,
    set_encoder_epoch,
    shared_encoder_memo,
)
from sed.utils.moved import current_target

#: ``model.encoder`` without ``_target_`` (configurations written before the interface): the AST keys.
DEFAULT_TARGET = "sed.models.encoders.ast.ASTEncoder"

__all__ = [
    "AudioEncoder",
    "ModuleEncoder",
    "INTERFACE_KEYS",
    "audio_fingerprint",
    "audio_encoder",
    "build_encoder",
    "model_inputs",
    "models_inputs",
    "optimizer_param_groups",
    "set_encoder_epoch",
    "shared_encoder_memo",
]


def _resolve(target: str) -> Any:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"model.encoder._target_={target}: cannot import it ({err})") from None


def build_encoder(node: dict[str, Any]) -> AudioEncoder:
    """The encoder of a ``model.encoder`` node: an :class:`AudioEncoder` class gets every key; any other callable
    gets its own keys and is wrapped in :class:`ModuleEncoder`, which takes the interface keys
    (:data:`INTERFACE_KEYS`: ``sample_rate``, ``layer``, ``frozen``, ...)."""
    if isinstance(node, DictConfig):  # a model built without Hydra's recursion gets the node as it is
        node = OmegaConf.to_container(node, resolve=True)
    node = dict(node)
    target = node.pop("_target_", None) or DEFAULT_TARGET
    target = current_target(target)  # a target saved before it moved
    factory = _resolve(target)
    if isinstance(factory, type) and issubclass(factory, AudioEncoder):
        return factory(**node)
    interface = {k: node.pop(k) for k in INTERFACE_KEYS if k in node}
    try:
        module = factory(**node)
    except TypeError as err:
        raise TypeError(f"model.encoder._target_={target}: {err}") from None
    return ModuleEncoder(module, description={"_target_": target, **node}, **interface)
