"""A pretrained audio encoder giving frame-level embeddings: the Audio Spectrogram Transformer (AST) of
``transformers``, with its input features computed on the device and an in-memory cache for the frozen case.

Why AST from ``transformers``: it is maintained, loads the published AudioSet checkpoints with
``from_pretrained`` from a local folder (nothing is downloaded at run time) and builds a random model from a
config dict (tests). Its input is the Kaldi-compatible 128-bin log-mel filterbank of 16-kHz audio (25-ms
Hanning windows every 10 ms), padded to ``max_length`` frames and normalised with the AudioSet mean and standard
deviation, exactly what ``ASTFeatureExtractor`` computes; here it is computed with
``torchaudio.compliance.kaldi.fbank`` on the device the audio is on, from the raw audio the model is given.

Frame-level embeddings: AST cuts the filterbank into 16x16 patches (strides 10 in frequency and time); the last
hidden state holds one token per patch after the two special tokens. The tokens of one time column are averaged
over frequency, giving ``[B, hidden, T_e]`` (one frame every ``time_stride`` filterbank frames, 100 ms for the
published models); columns that start in the zero padding past the audio are dropped. The model (see
:class:`sed.models.pretrained_crnn.PretrainedCRNN`) pools them to its own frame rate.

Caching: a frozen encoder gives the same embeddings for the same audio, so :meth:`ASTEncoder.embed` with
``cache=True`` keeps them (on the CPU, at most ``cache_max_gb``) keyed by a 128-bit fingerprint of the audio
samples themselves (:func:`audio_fingerprint`) and their number. Keying by content instead of by file name
means a cached embedding is always the embedding of exactly the audio the model sees: a clip cropped at another
offset, a window of a long evaluation clip or an audio augmentation is another key, computed fresh; nothing can
go stale. The training module asks for cached embeddings (training and validation steps); inference
(``sed.infer``, export) calls the encoder. The cache is per process and per encoder instance (the student and
teacher share one instance, :func:`shared_encoder_memo`); it is emptied when the encoder starts fine-tuning.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: AST's sample rate: the published models were trained on 16-kHz AudioSet.
AST_SAMPLE_RATE = 16000
#: ``ASTFeatureExtractor``'s defaults (AudioSet statistics), used when the folder has no preprocessor_config.json.
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974
_FBANK_WINDOW, _FBANK_SHIFT = 400, 160  # 25 ms, 10 ms at 16 kHz (Kaldi defaults)
_HINT = ("download published weights where there is internet, e.g. `huggingface-cli download "
         "MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir DIR`, and set model.encoder.path=DIR")


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


class ASTEncoder(nn.Module):
    """Raw audio ``[B, N]`` at ``sample_rate`` -> frame-level AST embeddings ``[B, hidden, T_e]``.

    Args:
        path: a local folder holding ``config.json`` and the weights (``save_pretrained`` output or a downloaded
            hub snapshot; an ``ASTForAudioClassification`` checkpoint loads too, its classifier ignored), and
            optionally ``preprocessor_config.json`` (normalisation mean/std). Loaded with ``local_files_only``.
        config: ``ASTConfig`` keys of a randomly initialised model (tests, or training from scratch); used
            only when ``path`` is null.
        frozen: no gradient reaches the encoder and it stays in evaluation mode; its embeddings may be cached.
        finetune_after_epoch: with ``frozen``, start fine-tuning at this (0-based) epoch (:meth:`set_epoch`).
        sample_rate: the rate of the audio given; resampled to 16 kHz on the device when different.
        cache: allow :meth:`embed` to cache embeddings while the encoder is frozen.
        cache_max_gb: the cache stops growing past this size (later clips are computed every time).
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        frozen: bool = True,
        finetune_after_epoch: int | None = None,
        sample_rate: int = AST_SAMPLE_RATE,
        cache: bool = True,
        cache_max_gb: float = 4.0,
    ) -> None:
        super().__init__()
        from transformers import ASTConfig, ASTModel

        mean, std = AUDIOSET_MEAN, AUDIOSET_STD
        if path is not None:
            folder = Path(os.path.expanduser(str(path)))
            if not folder.is_dir():
                raise FileNotFoundError(f"model.encoder.path={path}: no such directory; {_HINT}")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"model.encoder.path={path}: no config.json in this directory; {_HINT}")
            try:
                self.model = ASTModel.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as err:
                raise OSError(f"model.encoder.path={path}: cannot load an AST model from it ({err})") from err
            pre = folder / "preprocessor_config.json"
            if pre.is_file():
                pre_cfg = json.loads(pre.read_text())
                if pre_cfg.get("do_normalize", True):
                    mean, std = float(pre_cfg.get("mean", mean)), float(pre_cfg.get("std", std))
                else:
                    mean, std = 0.0, 0.5  # (x - 0) / (2 * 0.5): no normalisation
            self.identity = str(folder.resolve())
        elif config is not None:
            try:
                self.model = ASTModel(ASTConfig(**dict(config)))
            except (TypeError, ValueError) as err:
                raise ValueError(f"model.encoder.config: not a valid ASTConfig ({err})") from err
            self.identity = "random:" + json.dumps(dict(config), sort_keys=True)
        else:
            raise ValueError("model.encoder needs a path (a local folder with config.json and weights; "
                             f"{_HINT}) or a config (ASTConfig keys of a random model)")
        cfg = self.model.config
        if finetune_after_epoch is not None and not frozen:
            raise ValueError("model.encoder.finetune_after_epoch needs model.encoder.frozen=true (it says when to "
                             "stop freezing)")
        self.mean, self.std = mean, std
        self.sample_rate = int(sample_rate)
        self.num_mel_bins, self.max_length = int(cfg.num_mel_bins), int(cfg.max_length)
        self.patch_size, self.time_stride = int(cfg.patch_size), int(cfg.time_stride)
        self.f_dim = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
        self.t_dim = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
        self.dim = int(cfg.hidden_size)
        self.finetune_after_epoch = finetune_after_epoch
        self.use_cache, self.cache_max_bytes = bool(cache), int(float(cache_max_gb) * 2**30)
        self._cache: dict[tuple[int, int, int], Tensor] = {}
        self._cache_bytes, self._cache_full_logged = 0, False
        self.frozen = False
        if frozen:
            self.freeze()

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> None:
        self.frozen = True
        self.model.requires_grad_(False)
        self.model.eval()

    def set_epoch(self, epoch: int) -> None:
        """Unfreeze at ``finetune_after_epoch``: from then on the encoder trains with the rest of the student (its
        parameters are in the student's optimiser from the start, without gradients while frozen) and the cache
        is emptied (the embeddings change with every step)."""
        if self.frozen and self.finetune_after_epoch is not None and epoch >= self.finetune_after_epoch:
            self.frozen = False
            self.model.requires_grad_(True)
            self.model.train(self.training)
            self.clear_cache()
            log.info("Epoch %d: the pretrained audio encoder is fine-tuned from now on (cache emptied)", epoch)

    def train(self, mode: bool = True) -> ASTEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen encoder never uses dropout
        return self

    # ------------------------------------------------------------------ features and embeddings
    def fbank(self, audio: Tensor) -> tuple[Tensor, int]:
        """AST input ``[B, max_length, num_mel_bins]`` (``ASTFeatureExtractor``'s computation) and the number of
        filterbank frames holding audio."""
        import torchaudio

        if audio.dim() != 2:
            raise ValueError(f"the audio encoder expects audio [B, N], got shape {tuple(audio.shape)}")
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = audio.float()
            if self.sample_rate != AST_SAMPLE_RATE:
                x = torchaudio.functional.resample(x, self.sample_rate, AST_SAMPLE_RATE)
            if x.shape[-1] < _FBANK_WINDOW:
                raise ValueError(f"the audio encoder needs at least {_FBANK_WINDOW / AST_SAMPLE_RATE} s of audio")
            n = 1 + (x.shape[-1] - _FBANK_WINDOW) // _FBANK_SHIFT
            if n > self.max_length:
                raise ValueError(
                    f"{x.shape[-1] / AST_SAMPLE_RATE:g} s of audio give {n} filterbank frames, more than the AST's "
                    f"max_length={self.max_length} ({(self.max_length - 1) * 0.01 + 0.025:g} s): set a shorter "
                    "data.clip_duration or an encoder with a longer max_length"
                )
            feats = torch.stack([
                torchaudio.compliance.kaldi.fbank(row.unsqueeze(0), sample_frequency=AST_SAMPLE_RATE,
                                                  window_type="hanning", num_mel_bins=self.num_mel_bins)
                for row in x
            ])
            feats = F.pad(feats, (0, 0, 0, self.max_length - n))
            return (feats - self.mean) / (2 * self.std), n

    def forward(self, audio: Tensor) -> Tensor:
        """Frame embeddings ``[B, hidden, T_e]`` of ``audio [B, N]`` (no cache)."""
        feats, n = self.fbank(audio)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.model(input_values=feats).last_hidden_state[:, 2:]  # [B, f_dim * t_dim, D]
        frames = hidden.unflatten(1, (self.f_dim, self.t_dim)).mean(1)  # [B, t_dim, D]
        n_cols = min(self.t_dim, (n - 1) // self.time_stride + 1)  # columns starting on audio
        return frames[:, :n_cols].transpose(1, 2)

    def embed(self, audio: Tensor, cache: bool = False) -> Tensor:
        """:meth:`forward`, through the cache when ``cache`` is asked for, allowed and the encoder is frozen."""
        if not (cache and self.use_cache and self.frozen):
            return self(audio)
        keys = audio_fingerprint(audio)
        found = [self._cache.get(k) for k in keys]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            fresh = self(audio[missing])
            with torch.inference_mode(False):  # stored tensors must be usable outside a validation step too
                for i, e in zip(missing, fresh):
                    found[i] = e
                    self._store(keys[i], e)
        return torch.stack([e.to(audio.device, non_blocking=True) for e in found])

    def _store(self, key: tuple[int, int, int], emb: Tensor) -> None:
        size = emb.numel() * emb.element_size()
        if self._cache_bytes + size > self.cache_max_bytes:
            if not self._cache_full_logged:
                self._cache_full_logged = True
                log.info("Embedding cache full (%d clips, model.encoder.cache_max_gb=%g): further clips are "
                         "encoded at every use", len(self._cache), self.cache_max_bytes / 2**30)
            return
        self._cache[key] = emb.detach().to("cpu", copy=True)
        self._cache_bytes += size

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes, self._cache_full_logged = 0, False

    @property
    def cache_size(self) -> int:
        """Number of cached clips."""
        return len(self._cache)

    def extra_repr(self) -> str:
        return f"identity={self.identity!r}, frozen={self.frozen}, dim={self.dim}, sample_rate={self.sample_rate}"


# ---------------------------------------------------------------------- the model contract's extension
def audio_encoder(model: nn.Module) -> ASTEncoder | None:
    """The pretrained audio encoder of ``model`` (its ``audio_encoder`` attribute), or None for a plain model."""
    enc = getattr(model, "audio_encoder", None)
    return enc if isinstance(enc, nn.Module) else None


def model_inputs(model: nn.Module, audio: Tensor, cache: bool = False) -> dict[str, Tensor]:
    """The inputs ``model`` takes besides its features: ``{"embeddings": [B, D, T_e]}`` of ``audio`` for a model
    with a pretrained audio encoder, ``{}`` for any other (``model(features, **model_inputs(model, audio))``)."""
    enc = audio_encoder(model)
    return {} if enc is None else {"embeddings": enc.embed(audio, cache=cache)}


def shared_encoder_memo(model: nn.Module) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo that keeps ``model``'s audio encoder shared: the teacher built with it uses the
    student's encoder object. A frozen encoder needs no EMA copy (the EMA skips the tensors both hold), one
    cache serves both, and a fine-tuned encoder is the student's for both (the teacher averages the CRNN)."""
    enc = audio_encoder(model)
    return {} if enc is None else {id(enc): enc}


def set_encoder_epoch(model: nn.Module, epoch: int) -> None:
    """Start fine-tuning ``model``'s encoder when ``epoch`` reaches its ``finetune_after_epoch``."""
    enc = audio_encoder(model)
    if enc is not None:
        enc.set_epoch(epoch)
