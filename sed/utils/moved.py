"""``_target_`` paths of classes that moved: configurations saved in earlier checkpoints and run directories name
the old paths and keep loading through this one map (the package was grouped by pipeline stage; the AST encoder
moved under ``sed.models.encoders``)."""

from __future__ import annotations

from typing import Any

MOVED_TARGETS: dict[str, str] = {
    "sed.datamodule.SEDDataModule": "sed.data.datamodule.SEDDataModule",
    "sed.features.FrontEnd": "sed.features.frontend.FrontEnd",
    "sed.scaler.TorchScaler": "sed.features.scaler.TorchScaler",
    "sed.energy.EnergyTracker": "sed.dcase.energy.EnergyTracker",
    "sed.models.embeddings.ASTEncoder": "sed.models.encoders.ast.ASTEncoder",
}


def current_target(target: str) -> str:
    """Where the class ``target`` names lives now."""
    return MOVED_TARGETS.get(target, target)


def upgrade_targets(config: Any) -> Any:
    """``config`` (a plain nested dict/list, e.g. a checkpoint's saved configuration) with every moved
    ``_target_`` renamed to its current path (:data:`MOVED_TARGETS`); other values are returned as they are."""
    if isinstance(config, dict):
        return {
            k: (current_target(v) if k == "_target_" and isinstance(v, str) else upgrade_targets(v))
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [upgrade_targets(v) for v in config]
    return config
