"""Objects built from config groups. Lightning callbacks and loggers (``callbacks``, ``logger``): a dict of named
``_target_`` nodes, each instantiated unless it is null, as in lightning-hydra-template; the network (``model``)
and the ``_partial_`` optimiser and scheduler factories (``optimizer``, ``scheduler``).

``last.ckpt`` is not one of them: :class:`sed.run.checkpointing.ResumeCheckpoint` is always added (it is what makes a
run resumable after a signal or a crash), driven by ``callbacks.checkpoint.save_last`` and
``callbacks.checkpoint.every_n_train_steps``.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, Optional

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor
from pytorch_lightning.loggers import Logger
from torch import nn

from sed.run.checkpointing import ResumeCheckpoint

log = logging.getLogger(__name__)


def _entries(group: str, cfg: Optional[DictConfig]) -> dict[str, Any]:
    """``{name: node}`` of a group; a single ``_target_`` node (``logger: {_target_: ...}``) is one entry."""
    if cfg is None:
        return {}
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"{group} must be a mapping of name -> _target_ config, got {type(container).__name__}")
    if "_target_" in container:
        named = [k for k, v in container.items() if isinstance(v, dict) and "_target_" in v]
        if named:
            raise ValueError(
                f"{group} holds a _target_ ({container['_target_']}) next to named entries {named}: choose a config "
                f"of the group ({group}=NAME, e.g. logger=csv) or add an entry with +{group}.NAME._target_=..."
            )
        return {group: container}
    for name, node in container.items():
        if node is not None and not (isinstance(node, dict) and "_target_" in node):
            raise ValueError(f"{group}.{name} has no _target_ (set it to null to leave it out)")
    return {name: node for name, node in container.items() if node is not None}


def _build(group: str, name: str, node: dict[str, Any]) -> Any:
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:  # name the key at fault: the node was built from a plain dict
        raise InstantiationException(f"{group}.{name}: {err}") from err


def build_loggers(cfg: Optional[DictConfig]) -> list[Logger]:
    """Every logger of the ``logger`` group (an empty list for ``logger=none``)."""
    return [_build("logger", name, node) for name, node in _entries("logger", cfg).items()]


def build_callbacks(
    cfg: Optional[DictConfig], run_dir: str | Path, resume_hint: str = "", has_logger: bool = True
) -> list[Callback]:
    """The best-checkpoint callback (``callbacks.checkpoint``), :class:`ResumeCheckpoint`, then every other
    callback of the ``callbacks`` group in its order."""
    entries = _entries("callbacks", cfg)
    checkpoint = dict(entries.pop("checkpoint", None) or {})
    save_last = checkpoint.pop("save_last", True)
    every_n_train_steps = checkpoint.pop("every_n_train_steps", None)
    dirpath = checkpoint.get("dirpath") or str(Path(run_dir) / "checkpoints")
    callbacks: list[Callback] = []
    if checkpoint:
        # Lightning's save_last only follows top-k saves and goes stale: last.ckpt is ResumeCheckpoint's.
        callbacks.append(_build("callbacks", "checkpoint", {**checkpoint, "save_last": False}))
    if save_last:
        callbacks.append(ResumeCheckpoint(dirpath, every_n_train_steps, resume_hint))
    elif every_n_train_steps:
        raise ValueError("callbacks.checkpoint.every_n_train_steps needs callbacks.checkpoint.save_last=true")
    for name, node in entries.items():
        callback = _build("callbacks", name, node)
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            log.info("callbacks.%s left out: there is no logger to send learning rates to", name)
            continue
        callbacks.append(callback)
    return callbacks


def build_model(node: Any, n_classes: int, n_features: int) -> nn.Module:
    """The network of ``cfg.model`` (contract: sed.run.config.ModelConfig); a class refusing keys left from another
    model config gets a hint."""
    # A pretrained audio encoder's node is the model's to build (sed.models.encoders.build_encoder: a user's module
    # gets its own keys, the interface the rest), not Hydra's.
    recursive = not isinstance(node.get("encoder"), (dict, DictConfig))
    try:
        return instantiate(node, n_classes=n_classes, n_features=n_features, _convert_="all", _recursive_=recursive)
    except InstantiationException as err:
        if "unexpected keyword" not in str(err) or node.get("_target_") == "sed.models.crnn.CRNN":
            raise
        raise InstantiationException(
            f"model._target_={node.get('_target_')}: {err}\nmodel.* still holds keys of another model config: "
            "start from an empty node (~model +model._target_=... +model.KEY=...) or use a conf/model/NAME.yaml"
        ) from err


def call_factory(group: str, node: Any, first: Any, **optional: Any) -> Any:
    """``instantiate(node)(first, **kwargs)`` for a ``_partial_`` node of config group ``group``; of ``optional``,
    only the keywords the factory takes are passed. A factory that refuses its keys fails naming the group."""
    if not node or "_target_" not in node:
        raise ValueError(f"{group}: needs a _target_ (e.g. {group}={'adam' if group == 'optimizer' else 'exp_warmup'})")
    factory = instantiate(node, _convert_="all")
    if not callable(factory):
        raise TypeError(f"{group}._target_={node['_target_']} did not give a factory: set {group}._partial_=true")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in optional.items() if takes_any or k in params}
    try:
        return factory(first, **kwargs)
    except TypeError as err:
        hint = (
            f" (remove a key it does not take with ~{group}.KEY, or choose another {group} config)"
            if "unexpected keyword" in str(err)
            else ""
        )
        raise TypeError(f"{group}._target_={node['_target_']}: {err}{hint}") from err
