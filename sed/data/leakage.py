"""Clips shared between sets that should not share them, found by path and by content.

A clip of the test set that is also a training clip makes the test scores optimistic (a classic way to publish
wrong numbers); one of the validation set biases the checkpoint and post-processing chosen on it; one listed in
both the strong and the weak training sets is trained on twice. Copies under another name count: files are
compared by size and a fingerprint of a few blocks, and equal fingerprints are confirmed on the whole content.
:func:`warn_shared_clips` logs one warning per pair of sets, with the count and examples.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from sed.data.checks import ClipSet

logger = logging.getLogger(__name__)

#: ``(role, other role, why it matters)``: clips of a set of the first role (a training subset's kind, or the
#: evaluation stage) that are also in a set of the second are reported.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("weak", "strong", "they are trained on twice"),
    *(("test", s, "the test scores would be optimistic") for s in ("strong", "weak", "unlabeled", "val")),
    *(
        ("val", s, "the checkpoint and the post-processing chosen on validation would favour them")
        for s in ("strong", "weak", "unlabeled")
    ),
)
_BLOCK = 4096


def _fingerprint(path: Path) -> Optional[tuple[int, bytes]]:
    """``(size, digest of a block in the middle and the last block)``; None when unreadable (the data checks
    report it)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.blake2b(digest_size=16)
            for offset in (size // 2, max(size - _BLOCK, 0)):
                f.seek(offset)
                digest.update(f.read(_BLOCK))
    except OSError:
        return None
    return size, digest.digest()


def _content_hash(path: Path) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "blake2b").digest()
    except OSError:
        return None


def _pairs(sets: Sequence[ClipSet], roles: Optional[Mapping[str, str]]) -> list[tuple[str, str, str]]:
    """``(set, other, why)`` for every two sets whose roles (``roles[name]``, else the name) make a pair of
    :data:`PAIRS`."""
    role = {s.name: (roles or {}).get(s.name, s.name) for s in sets}
    return [
        (a.name, b.name, why)
        for ra, rb, why in PAIRS
        for a in sets
        for b in sets
        if a.name != b.name and role[a.name] == ra and role[b.name] == rb
    ]


def shared_clips(
    sets: Sequence[ClipSet], roles: Optional[Mapping[str, str]] = None, workers: int = 8
) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``(set, other, [(filename in set, filename in other), ...])`` for each pair of sets of ``sets`` whose roles
    make a pair of :data:`PAIRS` and that share clips: the same file (resolved path) or the same content.
    ``roles`` maps a set's name to its role (``strong``, ``weak``, ``unlabeled``, ``val``, ``test``); a set not in
    it has its name as its role."""
    by_name = {s.name: s for s in sets}
    pairs = [(a, b) for a, b, _ in _pairs(sets, roles)]
    if not pairs:
        return []
    involved = sorted({n for pair in pairs for n in pair})
    files = [(n, f, (by_name[n].audio_dir / f).resolve()) for n in involved for f in by_name[n].filenames]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="leakage") as pool:
        prints = list(pool.map(lambda item: _fingerprint(item[2]), files))
    groups: dict[object, list[tuple[str, str, Path]]] = defaultdict(list)
    for item, fp in zip(files, prints):
        if fp is not None:
            groups[fp].append(item)
    same: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for members in groups.values():
        if len({name for name, _, _ in members}) < 2:
            continue
        hashes = {path: _content_hash(path) for _, _, path in members}  # equal fingerprints: confirm
        for i, (na, fa, pa) in enumerate(members):
            for nb, fb, pb in members[i + 1 :]:
                if na != nb and (pa == pb or (hashes[pa] is not None and hashes[pa] == hashes[pb])):
                    same[(na, nb)].add((fa, fb))
                    same[(nb, na)].add((fb, fa))
    return [(a, b, sorted(same[(a, b)])) for a, b in pairs if same.get((a, b))]


def warn_shared_clips(sets: Sequence[ClipSet], roles: Optional[Mapping[str, str]] = None) -> None:
    """Log a warning for each pair of sets (:func:`shared_clips`) that shares clips (count and up to three
    examples)."""
    why = {(a, b): reason for a, b, reason in _pairs(sets, roles)}
    for a, b, found in shared_clips(sets, roles):
        clips = len({fa for fa, _ in found})
        examples = ", ".join(fa if fa == fb else f"{fa} = {fb}" for fa, fb in found[:3])
        logger.warning(
            "%d clip(s) of the %s set are also in the %s set (the same file or the same audio): %s; e.g. %s",
            clips,
            a,
            b,
            why[(a, b)],
            examples,
        )
