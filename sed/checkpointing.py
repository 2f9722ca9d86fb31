"""Checkpoints written through a temporary file and a rename, so a crash mid-save keeps the previous one."""

from __future__ import annotations

from typing import Any, Optional

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from sed.utils.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O, with atomic saves on local paths."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)
