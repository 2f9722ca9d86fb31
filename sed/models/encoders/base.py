"""The pretrained audio encoder interface: raw mono audio ``[B, N]`` at the data's sample rate -> frame embeddings
``[B, D, T_e]``, whatever the network inside.

:class:`AudioEncoder` wraps a network (``self.model``) and gives every family the same behaviour:

* resampling from the data's rate (``sample_rate``) to the network's own rate on the device, in float32;
* the layer used (``layer``): ``"last"`` (the network's output), a layer index (0-based, negative from the top)
  or ``"weighted"``, a learned softmax-weighted sum of all layers' outputs (a parameter of the wrapper, trained
  with the model even while the network is frozen);
* freezing (``frozen``), fine-tuning from an epoch on (``finetune_after_epoch``) with the lowest
  ``freeze_layers`` blocks kept frozen, its own learning rate (``lr``) and layer-wise decay (``layer_decay``), see
  :meth:`AudioEncoder.param_groups`; gradient checkpointing of the blocks (``gradient_checkpointing``);
* an :attr:`AudioEncoder.identity`: a hash of the weights and of everything else that changes the output, the key
  of the embedding caches: in memory (``cache``, per process) and on disk (``cache_dir``,
  :class:`sed.models.encoders.store.EmbeddingStore`, shared by runs). Caching applies only while the network is
  frozen; clips are keyed by their samples (:func:`audio_fingerprint`), so a changed file, another crop or an
  augmented clip is another key.

A network plugs in when it has ``dim``, ``sample_rate`` and ``frame_hop`` (seconds) attributes and
``forward(audio [B, N]) -> [B, D, T_e]``; ``hidden_states(audio) -> [[B, T_e, D], ...]`` (one per block, bottom
up) is needed for ``layer`` other than ``"last"``, and a ``blocks`` ModuleList (or a ``blocks()`` method) for
``freeze_layers``, ``layer_decay`` and ``gradient_checkpointing``. :class:`ModuleEncoder` wraps such a module built
from ``model.encoder._target_``; the families' loaders (AST, BEATs, ATST-Frame) are subclasses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

#: Keys of the interface (the constructor of :class:`AudioEncoder`), as opposed to a network's own keys.
INTERFACE_KEYS = (
    "sample_rate",
    "layer",
    "frozen",
    "finetune_after_epoch",
    "freeze_layers",
    "lr",
    "layer_decay",
    "gradient_checkpointing",
    "cache",
    "cache_max_gb",
    "cache_dir",
    "cache_dtype",
)
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_IDENTITY_FORMAT = 1  # bump when the cached computation changes for the same weights and options


# ---------------------------------------------------------------------------------------------------- keys
def audio_fingerprint(audio: Tensor) -> list[tuple[int, int, int]]:
    """``(length, h1, h2)`` per row of ``audio [B, N]``: two random linear hashes of the float32 bit patterns,
    modulo 2**64, computed on the audio's device (only ``B`` numbers come back). Integer sums are exact in any
    order, so the same samples give the same key in any batch, on any device."""
    bits = audio.detach().float().contiguous().view(torch.int32).to(torch.int64)
    weights = _hash_weights(bits.shape[-1]).to(bits.device)
    hashes = torch.stack([(bits * w).sum(-1) for w in weights], -1).tolist()  # wraps modulo 2**64
    return [(bits.shape[-1], h1, h2) for h1, h2 in hashes]


@functools.lru_cache(maxsize=8)
def _hash_weights(n: int) -> Tensor:
    gen = torch.Generator().manual_seed(n)
    return torch.randint(1, 2**31 - 1, (2, n), generator=gen, dtype=torch.int64)


def key_name(key: tuple[int, int, int]) -> str:
    """A fingerprint as a file-name-safe string (the two hashes as unsigned 64-bit hex)."""
    n, h1, h2 = key
    return f"{h1 & (2**64 - 1):016x}{h2 & (2**64 - 1):016x}-{n}"


def _tensor_bytes(t: Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


# ---------------------------------------------------------------------------------------------------- checkpointing
@functools.lru_cache(maxsize=None)
def _checkpointed_class(cls: type) -> type:
    """A subclass of the block class ``cls`` whose forward is recomputed in the backward pass (activation
    checkpointing) when it runs with gradients; swapped in as the instance's class, so state-dict keys, copies and
    the teacher keep working."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return checkpoint(super(sub, self).forward, *args, use_reentrant=False, **kwargs)
        return super(sub, self).forward(*args, **kwargs)

    sub = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "__module__": cls.__module__})
    return sub


# ---------------------------------------------------------------------------------------------------- the interface
class AudioEncoder(nn.Module):
    """Base of every pretrained audio encoder (see the module docstring for the options).

    Args:
        sample_rate: the rate of the audio given (the data's); resampled to the network's on the device.
        layer: ``"last"``, a block index, or ``"weighted"`` (learned softmax weights over all blocks).
        frozen: the network gets no gradient and stays in evaluation mode; its embeddings may be cached.
        finetune_after_epoch: with ``frozen``, fine-tune from this (0-based) epoch on (:meth:`set_epoch`).
        freeze_layers: when fine-tuning, the lowest ``K`` blocks and everything below them stay frozen.
        lr: learning rate of the network's top block when fine-tuned (null: the model's).
        layer_decay: each block below the top gets ``layer_decay`` times the rate of the block above it.
        gradient_checkpointing: recompute each block's activations in the backward pass (memory for time).
        cache: keep a frozen network's embeddings in memory (at most ``cache_max_gb``).
        cache_dir: a folder keeping them on disk across runs (:class:`sed.models.encoders.store.EmbeddingStore`).
        cache_dtype: ``float32`` or ``float16`` (half the disk; every embedding, cached or not, is rounded to it).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        layer: str | int = "last",
        frozen: bool = True,
        finetune_after_epoch: Optional[int] = None,
        freeze_layers: int = 0,
        lr: Optional[float] = None,
        layer_decay: float = 1.0,
        gradient_checkpointing: bool = False,
        cache: bool = True,
        cache_max_gb: float = 4.0,
        cache_dir: Optional[str] = None,
        cache_dtype: str = "float32",
    ) -> None:
        super().__init__()
        if finetune_after_epoch is not None and not frozen:
            raise ValueError(
                "model.encoder.finetune_after_epoch needs model.encoder.frozen=true (it says when to stop freezing)"
            )
        if isinstance(layer, str) and layer not in ("last", "weighted"):
            try:
                layer = int(layer)
            except ValueError:
                raise ValueError(
                    f"model.encoder.layer must be 'last', 'weighted' or a layer index, got {layer!r}"
                ) from None
        if not 0.0 < float(layer_decay) <= 1.0:
            raise ValueError(f"model.encoder.layer_decay must be in (0, 1], got {layer_decay}")
        if int(freeze_layers) < 0:
            raise ValueError(f"model.encoder.freeze_layers must be >= 0, got {freeze_layers}")
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"model.encoder.cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {cache_dtype!r}")
        self.sample_rate = int(sample_rate)
        self.layer = layer
        self.finetune_after_epoch = finetune_after_epoch
        self.freeze_layers = int(freeze_layers)
        self.lr = None if lr is None else float(lr)
        self.layer_decay = float(layer_decay)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.use_cache, self.cache_max_bytes = bool(cache), int(float(cache_max_gb) * 2**30)
        self.cache_dir = None if cache_dir in (None, "") else str(cache_dir)
        self.cache_dtype = cache_dtype
        self._start_frozen = bool(frozen)
        self.frozen = False
        self._identity: Optional[str] = None
        self._cache: dict[tuple[int, int, int], Tensor] = {}
        self._cache_bytes, self._cache_full_logged = 0, False
        self._store: Any = None  # EmbeddingStore, opened at the first cached call
        self.counts: Counter = Counter()  # memory / disk / computed / varying clips since the last reset

    def _attach(self, model: nn.Module, description: dict[str, Any], **declared: Any) -> None:
        """Finish construction around ``model`` (the subclass's network): its declared rate, width, frame hop and
        blocks, the layer weights, the resampler, and freezing. ``description``: what else changes the output
        (plain values; part of the identity). ``declared``: ``dim``, ``sample_rate``, ``frame_hop`` for a network
        that does not declare them itself."""
        from sed.features.resample import Resample

        values = {name: declared.get(name, getattr(model, name, None)) for name in ("dim", "sample_rate", "frame_hop")}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise TypeError(
                f"model.encoder: {type(model).__name__} does not declare {', '.join(missing)} (an encoder "
                "declares its width dim, its sample_rate and its frame_hop in seconds)"
            )
        self.model = model
        self.description = dict(description)
        self.native_rate, self.dim = int(values["sample_rate"]), int(values["dim"])
        self.frame_hop = float(values["frame_hop"])
        self.n_layers = len(self.blocks()) or int(getattr(model, "n_layers", 0) or 0)
        self.resample = Resample(self.sample_rate, self.native_rate)
        if isinstance(self.layer, int) and not -max(self.n_layers, 1) <= self.layer < max(self.n_layers, 1):
            raise ValueError(f"model.encoder.layer={self.layer}: the encoder has {self.n_layers} layers")
        if self.layer == "weighted":
            if self.n_layers < 1:
                raise ValueError("model.encoder.layer=weighted needs an encoder that gives its layers' outputs")
            self.layer_weights = nn.Parameter(torch.zeros(self.n_layers))
        if self.freeze_layers > self.n_layers:
            raise ValueError(
                f"model.encoder.freeze_layers={self.freeze_layers}: the encoder has {self.n_layers} layers"
            )
        if self.gradient_checkpointing:
            for block in self.blocks():
                block.__class__ = _checkpointed_class(type(block))
        if self._start_frozen:
            self.freeze()
        else:
            self.unfreeze()

    # ------------------------------------------------------------------ what a family provides
    def blocks(self) -> Sequence[nn.Module]:
        """The network's blocks (transformer layers), bottom up: for layer-wise decay, partial freezing and
        checkpointing. Default: the network's ``blocks`` (a ModuleList or a method returning one)."""
        blocks = getattr(getattr(self, "model", None), "blocks", None)
        blocks = blocks() if callable(blocks) and not isinstance(blocks, nn.Module) else blocks
        return list(blocks) if blocks is not None else []

    def network_forward(self, audio: Tensor) -> Tensor:
        """The network's output ``[B, D, T_e]`` for audio at its own rate (``layer="last"``)."""
        return self.model(audio)

    def network_hidden_states(self, audio: Tensor) -> list[Tensor]:
        """Every block's output ``[B, T_e, D]``, bottom up, for audio at the network's rate."""
        hidden = getattr(self.model, "hidden_states", None)
        if hidden is None:
            raise TypeError(f"model.encoder.layer={self.layer!r} needs {type(self.model).__name__}.hidden_states")
        return list(hidden(audio))

    # ------------------------------------------------------------------ freezing and fine-tuning
    @property
    def will_finetune(self) -> bool:
        """Whether the network's weights change during training (now or from ``finetune_after_epoch`` on)."""
        return not self._start_frozen or self.finetune_after_epoch is not None

    def freeze(self) -> None:
        self.frozen = True
        self.model.requires_grad_(False)
        self.model.eval()

    def unfreeze(self, requires_grad: bool = True) -> None:
        """Let the weights change: gradients for all but the lowest ``freeze_layers`` blocks (``requires_grad``;
        False for the teacher's copy, which follows the student by EMA), and no more caching."""
        self.frozen = False
        self._identity = None
        self.clear_cache()
        self.model.requires_grad_(False)
        if requires_grad:
            for p in self.trainable_parameters():
                p.requires_grad_(True)
        self.model.train(self.training)

    def set_epoch(self, epoch: int, requires_grad: bool = True) -> bool:
        """Unfreeze at ``finetune_after_epoch``; True when it happened now."""
        if self.frozen and self.finetune_after_epoch is not None and epoch >= self.finetune_after_epoch:
            self.unfreeze(requires_grad)
            return True
        return False

    def train(self, mode: bool = True) -> AudioEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen network never uses dropout
        return self

    def _depths(self) -> dict[int, int]:
        """Depth of each network parameter: block ``i`` (1 = lowest) gets ``i``; parameters registered before the
        first block (front-end, patch embedding, positional convolution) 0, after the last (final norm)
        ``n_layers + 1``."""
        blocks = self.blocks()
        depth = {id(p): i + 1 for i, b in enumerate(blocks) for p in b.parameters()}
        depth.update({id(p): 0 for p in self.front_parameters()})
        below = True
        out = {}
        for p in self.model.parameters():
            if id(p) in depth:
                below = below and depth[id(p)] == 0
                out[id(p)] = depth[id(p)]
            else:
                out[id(p)] = 0 if below else len(blocks) + 1
        return out

    def front_parameters(self) -> list[nn.Parameter]:
        """Parameters below the first block although registered after the last (a family overrides it)."""
        return []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The network's parameters that fine-tuning trains: all but those at depth <= ``freeze_layers`` (when
        ``freeze_layers`` > 0, the front-end below the blocks too)."""
        if self.freeze_layers == 0:
            return list(self.model.parameters())
        depths = self._depths()
        return [p for p in self.model.parameters() if depths[id(p)] > self.freeze_layers]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups of the network's trainable parameters, one per depth: the top block and anything
        above it at ``self.lr`` (or ``lr``), each block below at ``layer_decay`` times the one above, the front-end
        below the first block at one step less again (layer-wise learning-rate decay, as ATST-SED and BEiT).
        Frozen blocks are left out (they never train); a frozen network's groups are there from the start so that
        unfreezing needs no new optimiser."""
        top = self.lr if self.lr is not None else float(lr)
        depths = self._depths()
        trainable = {id(p) for p in self.trainable_parameters()}
        by_depth: dict[int, list[nn.Parameter]] = {}
        for p in self.model.parameters():
            if id(p) in trainable:
                by_depth.setdefault(depths[id(p)], []).append(p)
        n = len(self.blocks())
        return [
            {"params": params, "lr": top * self.layer_decay ** max(n - d, 0), "name": f"encoder.depth{d}"}
            for d, params in sorted(by_depth.items(), reverse=True)
        ]

    # ------------------------------------------------------------------ embeddings
    @property
    def output_layers(self) -> int:
        """Layers in the cached form of an embedding: all of them for ``layer="weighted"``, else 1."""
        return self.n_layers if self.layer == "weighted" else 1

    def compute(self, audio: Tensor) -> Tensor:
        """The cacheable embeddings of ``audio [B, N]`` at ``sample_rate``: ``[B, D, T_e]``, or ``[B, L, D, T_e]``
        (every layer) for ``layer="weighted"``; no cache."""
        if audio.dim() != 2:
            raise ValueError(f"the audio encoder expects audio [B, N], got shape {tuple(audio.shape)}")
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = self.resample(audio.float())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.layer == "last":
                return self.network_forward(x)
            states = self.network_hidden_states(x)
            if self.layer == "weighted":
                return torch.stack(states, 1).transpose(2, 3)  # [B, L, D, T]
            return states[self.layer].transpose(1, 2)

    def model_embeddings(self, embeddings: Optional[Tensor], audio: Optional[Tensor], owner: str) -> Tensor:
        """``[B, D, T_e]`` for a model's forward: the embeddings it was given (cached or mixed up by the training
        module), else those of its ``audio``; ``owner`` names the model in the error when it has neither."""
        if embeddings is None:
            if audio is None:
                raise ValueError(
                    f"{owner} needs the encoder embeddings or the audio of its features: "
                    "model(features, **sed.models.encoders.model_inputs(model, audio))"
                )
            embeddings = self.compute(audio)
        return self.combine(embeddings)

    def combine(self, embeddings: Tensor) -> Tensor:
        """``[B, D, T_e]`` from the cacheable form (the learned weighted sum for ``layer="weighted"``)."""
        if self.layer != "weighted":
            return embeddings
        if embeddings.dim() != 4 or embeddings.shape[1] != self.n_layers:
            raise ValueError(
                f"layer-weighted embeddings must be [B, L={self.n_layers}, D, T], got {tuple(embeddings.shape)}"
            )
        weights = torch.softmax(self.layer_weights, 0).to(embeddings.dtype)
        return torch.einsum("l,bldt->bdt", weights, embeddings)

    def forward(self, audio: Tensor) -> Tensor:
        """Frame embeddings ``[B, D, T_e]`` of ``audio [B, N]`` (no cache)."""
        return self.combine(self.compute(audio))

    def embed(self, audio: Tensor, cache: bool = False, cacheable: Optional[Sequence[bool]] = None) -> Tensor:
        """:meth:`compute`, through the caches when ``cache`` is asked for and the network is frozen.

        ``cacheable``: per row, whether the clip is the same at every epoch; rows marked False (random crops of
        longer files, audio augmentations) are computed and counted (``counts["varying"]``), never stored."""
        if not (cache and self.frozen and (self.use_cache or self.cache_dir)):
            return self.compute(audio)
        keys = audio_fingerprint(audio)
        keep = [True] * len(keys) if cacheable is None else [bool(c) for c in cacheable]
        found: list[Optional[Tensor]] = [self._cache.get(k) if ok else None for k, ok in zip(keys, keep)]
        self.counts["memory"] += sum(f is not None for f in found)
        store = self.store()
        if store is not None:
            for i, (k, ok) in enumerate(zip(keys, keep)):
                if ok and found[i] is None:
                    found[i] = store.get(k)
                    if found[i] is not None:
                        self.counts["disk"] += 1
                        self._remember(k, found[i])
        missing = [i for i, f in enumerate(found) if f is None]
        self.counts["varying"] += len(keys) - sum(keep)
        if missing:
            fresh = self.compute(audio[missing]).to(CACHE_DTYPES[self.cache_dtype])
            self.counts["computed"] += sum(keep[i] for i in missing)
            with torch.inference_mode(False):  # stored tensors must be usable outside a validation step too
                for i, e in zip(missing, fresh):
                    found[i] = e
                    if keep[i]:
                        self._remember(keys[i], e)
                        if store is not None:
                            store.put(keys[i], e)
        return torch.stack([e.to(audio.device, non_blocking=True) for e in found]).float()

    def _remember(self, key: tuple[int, int, int], emb: Tensor) -> None:
        if not self.use_cache:
            return
        size = emb.numel() * emb.element_size()
        if self._cache_bytes + size > self.cache_max_bytes:
            if not self._cache_full_logged:
                self._cache_full_logged = True
                log.info(
                    "Embedding cache in memory full (%d clips, model.encoder.cache_max_gb=%g): further clips are "
                    "read from disk or encoded at every use",
                    len(self._cache),
                    self.cache_max_bytes / 2**30,
                )
            return
        self._cache[key] = emb.detach().to("cpu", copy=True)
        self._cache_bytes += size

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes, self._cache_full_logged = 0, False

    @property
    def cache_size(self) -> int:
        """Number of clips cached in memory."""
        return len(self._cache)

    def store(self) -> Any:
        """The disk cache of this encoder (``cache_dir``), opened (and checked) at the first use; None without."""
        if self.cache_dir is None:
            return None
        if self._store is None or self._store.identity != self.identity:
            from sed.models.encoders.store import EmbeddingStore

            self._store = EmbeddingStore(self.cache_dir, self.identity, self.manifest(), self.cache_dtype)
        return self._store

    # ------------------------------------------------------------------ identity
    def manifest(self) -> dict[str, Any]:
        """What the identity hashes besides the weights, as plain values (written beside the cached files)."""
        return {
            "format": _IDENTITY_FORMAT,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "network": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "description": self.description,
            "layer": self.layer,
            "sample_rate": self.sample_rate,
            "native_rate": self.native_rate,
            "dim": self.dim,
            "frame_hop": self.frame_hop,
            "cache_dtype": self.cache_dtype,
        }

    @property
    def identity(self) -> str:
        """Hash of the network's weights and of :meth:`manifest`: equal identities give equal embeddings."""
        if self._identity is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(json.dumps(self.manifest(), sort_keys=True, default=str).encode())
            for name, t in self.model.state_dict().items():
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(_tensor_bytes(t))
            self._identity = h.hexdigest()
        return self._identity

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def extra_repr(self) -> str:
        return (
            f"frozen={self.frozen}, dim={self.dim}, layer={self.layer!r}, sample_rate={self.sample_rate}, "
            f"native_rate={self.native_rate}, frame_hop={self.frame_hop:g}"
        )


class ModuleEncoder(AudioEncoder):
    """Any network as an :class:`AudioEncoder`: ``module`` (or the ``_target_`` node ``network``) declaring
    ``dim``, ``sample_rate`` (its own) and ``frame_hop``, with ``forward(audio) -> [B, D, T_e]``.

    :func:`sed.models.encoders.build_encoder` builds one for a ``model.encoder._target_`` that is not an
    AudioEncoder: the network gets its own keys, this wrapper the interface keys."""

    def __init__(self, module: nn.Module, description: Optional[dict[str, Any]] = None, **options: Any) -> None:
        super().__init__(**options)
        self._attach(module, description or {})
