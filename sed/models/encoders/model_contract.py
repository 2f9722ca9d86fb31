"""How training, evaluation and inference reach a model's pretrained audio encoder (its ``audio_encoder``
attribute), the same way for the student and the teacher.

A model with an encoder takes, besides its features, ``embeddings=`` (the encoder's cacheable output for the same
audio; :func:`model_inputs`) or ``audio=``. Student and teacher share one encoder object while it is never
fine-tuned (one cache; the EMA skips tensors both hold); a fine-tuned encoder is deep-copied into the teacher,
which follows the student's by EMA like every other weight (:func:`shared_encoder_memo`). While the student's
copy is still frozen, both copies hold the same weights and the teacher reuses the student's embeddings
(:func:`models_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from sed.models.encoders.base import AudioEncoder


def audio_encoder(model: nn.Module) -> Optional[AudioEncoder]:
    """The pretrained audio encoder of ``model`` (its ``audio_encoder`` attribute), or None for a plain model."""
    enc = getattr(model, "audio_encoder", None)
    return enc if isinstance(enc, nn.Module) else None


def model_inputs(
    model: nn.Module, audio: Tensor, cache: bool = False, cacheable: Optional[Sequence[bool]] = None
) -> dict[str, Tensor]:
    """The inputs ``model`` takes besides its features: ``{"embeddings": ...}`` of ``audio`` for a model with an
    encoder, ``{}`` for any other (``model(features, **model_inputs(model, audio))``)."""
    enc = audio_encoder(model)
    return {} if enc is None else {"embeddings": enc.embed(audio, cache=cache, cacheable=cacheable)}


def models_inputs(
    models: Mapping[str, nn.Module], audio: Tensor, cache: bool = False, cacheable: Optional[Sequence[bool]] = None
) -> dict[str, dict[str, Tensor]]:
    """:func:`model_inputs` of each named model, computed once for encoders that give the same embeddings (a
    shared object, or a frozen copy of a still frozen one). A model that holds no gradient for its encoder (the
    teacher) computes under ``no_grad``."""
    out: dict[str, dict[str, Tensor]] = {}
    done: list[tuple[AudioEncoder, dict[str, Tensor]]] = []
    for name, model in models.items():
        enc = audio_encoder(model)
        if enc is None:
            out[name] = {}
            continue
        same = next((inputs for other, inputs in done if other is enc or (other.frozen and enc.frozen)), None)
        if same is None:
            trainable = any(p.requires_grad for p in enc.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
                same = model_inputs(model, audio, cache=cache, cacheable=cacheable)
            done.append((enc, same))
        out[name] = same
    return out


def shared_encoder_memo(model: nn.Module) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo that keeps ``model``'s encoder shared with the copy (the teacher) when it is never
    fine-tuned; empty (the teacher gets its own copy, averaged by EMA) when it is or will be."""
    enc = audio_encoder(model)
    return {} if enc is None or enc.will_finetune else {id(enc): enc}


def set_encoder_epoch(epoch: int, student: nn.Module, teacher: Optional[nn.Module] = None) -> bool:
    """Unfreeze the student's encoder at its ``finetune_after_epoch`` (and the teacher's own copy, which gets no
    gradient but stops caching); True when it happened now."""
    enc = audio_encoder(student)
    if enc is None:
        return False
    started = enc.set_epoch(epoch)
    teacher_enc = audio_encoder(teacher) if teacher is not None else None
    if teacher_enc is not None and teacher_enc is not enc:
        teacher_enc.set_epoch(epoch, requires_grad=False)
    return started


def optimizer_param_groups(model: nn.Module, lr: float, steps_per_epoch: int = 1) -> Iterable[Any]:
    """What the optimiser gets: ``model.parameters()`` for a model whose encoder never trains (as before encoders
    could be fine-tuned, so older runs resume), else the model's other parameters at ``lr`` then the encoder's
    layer-wise groups (:meth:`AudioEncoder.param_groups`), frozen ones included so that unfreezing later needs
    no new optimiser. The encoder's groups carry the step it starts training at (``start_step``): the warm-up
    schedule (:func:`sed.training.schedules.warmup_lambda_lr`) ramps them up from there."""
    enc = audio_encoder(model)
    if enc is None or not enc.will_finetune:
        return model.parameters()
    network = {id(p) for p in enc.model.parameters()}
    rest = [p for p in model.parameters() if id(p) not in network]
    start = int(enc.finetune_after_epoch or 0) * int(steps_per_epoch)
    return [{"params": rest, "name": "model"}, *({**g, "start_step": start} for g in enc.param_groups(lr))]


def pack_inputs(per_model: Mapping[str, dict[str, Tensor]], first: str = "student") -> dict[str, Tensor]:
    """The inputs of several models as one flat dict (what mixup mixes with one draw): ``first``'s keys as they
    are, another model's as ``"<name>.<key>"`` unless they are ``first``'s own tensors."""
    flat = dict(per_model.get(first, {}))
    for name, inputs in per_model.items():
        if name != first and inputs is not per_model.get(first):
            flat.update({f"{name}.{k}": v for k, v in inputs.items()})
    return flat


def unpack_inputs(flat: Mapping[str, Tensor], name: str, first: str = "student") -> dict[str, Tensor]:
    """``name``'s inputs from :func:`pack_inputs`' dict (``first``'s where it has none of its own)."""
    own = {k[len(name) + 1 :]: v for k, v in flat.items() if k.startswith(f"{name}.")}
    return own if name != first and own else {k: v for k, v in flat.items() if "." not in k}


def log_embedding_counts(enc: Optional[AudioEncoder], epoch: int, logger: Any) -> None:
    """Say where an epoch's cached embeddings came from (computed, disk, memory) and how many clips vary per
    epoch (computed on the fly, never cached), then reset the counts; nothing for an encoder that is not cached."""
    if enc is None or not enc.counts:
        return
    c = enc.counts
    logger.info(
        "Epoch %d, audio encoder embeddings (training and validation): %d computed%s, %d read from disk, "
        "%d from memory; %d training clip(s) vary per epoch (random crops or channels): computed on the fly, "
        "not cached",
        epoch,
        c["computed"],
        f" and written to {enc.cache_dir}" if enc.cache_dir else "",
        c["disk"],
        c["memory"],
        c["varying"],
    )
    c.clear()
