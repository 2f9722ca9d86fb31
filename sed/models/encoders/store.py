"""Frozen encoders' embeddings on disk, computed once and shared by every run and seed that uses the same encoder.

Layout of a cache folder (``model.encoder.cache_dir``)::

    .sed-embeddings.json          the marker: this folder is ours (written first, into a new or empty folder)
    <identity>/encoder.json       what the encoder identity hashes (weights aside), for people
    <identity>/ab/<key>.npy       one clip's embeddings, [D, T_e] (or [L, D, T_e]) in the cache dtype

``<identity>`` is :attr:`sed.models.encoders.base.AudioEncoder.identity` (a hash of the weights and options), so
another checkpoint, layer or input rate never reads these files; ``<key>`` is the fingerprint of the exact
samples the encoder gets (:func:`sed.models.encoders.base.audio_fingerprint`): a changed audio file, another crop
of it or another resampling is another key, so a stale entry is never served (it stays unused). Entries are
written to a temporary file and renamed, so an interrupted extraction leaves complete entries and temporary files
that are never read; an unreadable entry (a truncated file copied from elsewhere) is logged, recomputed and
replaced.

Never written into: a folder that exists, is not empty and has no marker (it may be the user's), and a folder
that cannot be written (a one-line error naming ``model.encoder.cache_dir``). A full disk stops the run with the
same kind of error.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from sed.models.encoders.base import CACHE_DTYPES, key_name
from sed.utils.io import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

MARKER = ".sed-embeddings.json"
KEY = "model.encoder.cache_dir"


class CacheFolderError(OSError):
    """The cache folder cannot be used: the message names ``model.encoder.cache_dir`` and what is wrong."""


def claim_folder(folder: str | os.PathLike) -> Path:
    """``folder`` made ours: created with the marker when absent or empty, accepted when the marker is there;
    a folder of someone else's, or one that cannot be written, is a :class:`CacheFolderError`."""
    root = Path(os.path.expanduser(str(folder)))
    marker = root / MARKER
    try:
        if marker.is_file():
            if not os.access(root, os.W_OK | os.X_OK):
                raise CacheFolderError(
                    f"{KEY}={folder}: the folder is read-only; give a writable folder (or copy it to one)"
                )
            return root
        if root.exists():
            if not root.is_dir():
                raise CacheFolderError(f"{KEY}={folder}: not a folder")
            # Our marker's temporary file is another process claiming the folder at this moment (DDP ranks).
            if any(not (p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp")) for p in root.iterdir()):
                raise CacheFolderError(
                    f"{KEY}={folder}: the folder holds files this project did not write (no "
                    f"{MARKER}); give a new or empty folder"
                )
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            marker,
            json.dumps({"what": "embeddings of frozen audio encoders (sed.models.encoders)", "format": 1}, indent=1)
            + "\n",
        )
    except PermissionError as err:
        raise CacheFolderError(f"{KEY}={folder}: cannot write there ({err.strerror}); give a writable folder") from None
    except CacheFolderError:
        raise
    except OSError as err:
        raise CacheFolderError(f"{KEY}={folder}: {_reason(err)}") from None
    return root


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full; free space, or set model.encoder.cache_dir=null to compute embeddings every epoch"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write there ({os.strerror(err.errno)}); give a writable folder"
    return f"{err.strerror or err}"


class EmbeddingStore:
    """The entries of one encoder identity in a cache folder: :meth:`get` and :meth:`put` by fingerprint."""

    def __init__(
        self, folder: str | os.PathLike, identity: str, manifest: dict[str, Any], dtype: str = "float32"
    ) -> None:
        self.folder = str(folder)
        self.identity = identity
        self.dtype = CACHE_DTYPES[dtype]
        self.root = claim_folder(folder) / identity
        self.written = 0
        description = self.root / "encoder.json"
        if not description.is_file():
            try:
                atomic_write_text(description, json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
            except OSError as err:
                raise CacheFolderError(f"{KEY}={folder}: {_reason(err)}") from None

    def path(self, key: tuple[int, int, int]) -> Path:
        name = key_name(key)
        return self.root / name[:2] / f"{name}.npy"

    def get(self, key: tuple[int, int, int]) -> Optional[Tensor]:
        """The stored embeddings of the clip with fingerprint ``key``, or None (absent, or unreadable: logged)."""
        path = self.path(key)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            log.warning("%s: unreadable embedding cache entry (%s); it is computed again and replaced", path, err)
            return None
        if array.dtype != np.dtype(str(self.dtype).removeprefix("torch.")) or array.ndim not in (2, 3):
            log.warning(
                "%s: embedding cache entry of dtype %s and shape %s, not this encoder's; computed again",
                path,
                array.dtype,
                array.shape,
            )
            return None
        return torch.from_numpy(array)

    def put(self, key: tuple[int, int, int], embeddings: Tensor) -> None:
        """Store one clip's embeddings atomically (a temporary file renamed into place)."""
        array = embeddings.detach().to("cpu", self.dtype).numpy()
        try:
            with atomic_open(self.path(key), "wb", fsync=False) as f:  # a lost entry is just computed again
                np.save(f, array, allow_pickle=False)
        except OSError as err:
            raise CacheFolderError(
                f"{KEY}={self.folder}: {_reason(err)} ({self.written} entries written by this run)"
            ) from None
        self.written += 1

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.npy"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.npy"))
