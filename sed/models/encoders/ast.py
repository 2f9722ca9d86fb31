"""AST, the Audio Spectrogram Transformer of ``transformers``, as an :class:`~sed.models.encoders.base.AudioEncoder`.

Why AST from ``transformers``: it is maintained, loads the published AudioSet checkpoints with
``from_pretrained`` from a local folder (nothing is downloaded at run time) and builds a random model from a
config dict (tests). Its input is the Kaldi-compatible 128-bin log-mel filterbank of 16-kHz audio (25-ms
Hanning windows every 10 ms), padded to ``max_length`` frames and normalised with the AudioSet mean and standard
deviation, exactly what ``ASTFeatureExtractor`` computes; here it is computed for the whole batch on the device
the audio is on (:func:`sed.models.encoders.kaldi_fbank.kaldi_fbank`, torchaudio's Kaldi numbers).

Frame-level embeddings: AST cuts the filterbank into 16x16 patches (strides 10 in frequency and time); a layer's
output holds one token per patch after the two special tokens. The tokens of one time column are averaged over
frequency, giving ``[B, hidden, T_e]`` (one frame every ``time_stride`` filterbank frames, 100 ms for the
published models); columns that start in the zero padding past the audio are dropped. ``layer="last"`` is the
model's ``last_hidden_state`` (after its final LayerNorm); a layer index or ``"weighted"`` reads the layers'
outputs before it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sed.models.encoders.base import AudioEncoder
from sed.models.encoders.kaldi_fbank import kaldi_fbank

#: AST's sample rate: the published models were trained on 16-kHz AudioSet.
AST_SAMPLE_RATE = 16000
#: ``ASTFeatureExtractor``'s defaults (AudioSet statistics), used when the folder has no preprocessor_config.json.
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974
_FBANK_WINDOW, _FBANK_SHIFT = 400, 160  # 25 ms, 10 ms at 16 kHz (Kaldi defaults)
_HINT = (
    "download published weights where there is internet, e.g. `huggingface-cli download "
    "MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir DIR`, and set model.encoder.path=DIR"
)


class ASTEncoder(AudioEncoder):
    """Raw audio ``[B, N]`` at ``sample_rate`` -> frame-level AST embeddings ``[B, hidden, T_e]``.

    Args:
        path: a local folder holding ``config.json`` and the weights (``save_pretrained`` output or a downloaded
            hub snapshot; an ``ASTForAudioClassification`` checkpoint loads too, its classifier ignored), and
            optionally ``preprocessor_config.json`` (normalisation mean/std). Loaded with ``local_files_only``.
        config: ``ASTConfig`` keys of a randomly initialised model (tests, or training from scratch); used
            only when ``path`` is null.
        **options: the interface's (:class:`~sed.models.encoders.base.AudioEncoder`): ``sample_rate``, ``layer``,
            ``frozen``, ``finetune_after_epoch``, ``cache``, ``cache_dir``, ...
    """

    def __init__(self, path: Optional[str] = None, config: Optional[dict[str, Any]] = None, **options: Any) -> None:
        super().__init__(**options)
        from transformers import ASTConfig, ASTModel

        mean, std = AUDIOSET_MEAN, AUDIOSET_STD
        if path is not None:
            folder = Path(os.path.expanduser(str(path)))
            if not folder.is_dir():
                raise FileNotFoundError(f"model.encoder.path={path}: no such directory; {_HINT}")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"model.encoder.path={path}: no config.json in this directory; {_HINT}")
            try:
                model = ASTModel.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as err:
                raise OSError(f"model.encoder.path={path}: cannot load an AST model from it ({err})") from err
            pre = folder / "preprocessor_config.json"
            if pre.is_file():
                pre_cfg = json.loads(pre.read_text())
                if pre_cfg.get("do_normalize", True):
                    mean, std = float(pre_cfg.get("mean", mean)), float(pre_cfg.get("std", std))
                else:
                    mean, std = 0.0, 0.5  # (x - 0) / (2 * 0.5): no normalisation
        elif config is not None:
            try:
                model = ASTModel(ASTConfig(**dict(config)))
            except (TypeError, ValueError) as err:
                raise ValueError(f"model.encoder.config: not a valid ASTConfig ({err})") from err
        else:
            raise ValueError(
                "model.encoder needs a path (a local folder with config.json and weights; "
                f"{_HINT}) or a config (ASTConfig keys of a random model)"
            )
        cfg = model.config
        self.mean, self.std = mean, std
        self.num_mel_bins, self.max_length = int(cfg.num_mel_bins), int(cfg.max_length)
        self.patch_size, self.time_stride = int(cfg.patch_size), int(cfg.time_stride)
        self.f_dim = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
        self.t_dim = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
        self._attach(
            model,
            {"ast": {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}, "mean": mean, "std": std},
            dim=int(cfg.hidden_size),
            sample_rate=AST_SAMPLE_RATE,
            frame_hop=self.time_stride * _FBANK_SHIFT / AST_SAMPLE_RATE,
        )

    def blocks(self) -> Sequence[nn.Module]:
        model = getattr(self, "model", None)
        if model is None:
            return []
        layers = getattr(model, "layers", None)  # transformers >= 5; model.encoder.layer before
        return list(layers if layers is not None else model.encoder.layer)

    # ------------------------------------------------------------------ features and embeddings
    def fbank(self, audio: Tensor) -> tuple[Tensor, int]:
        """AST input ``[B, max_length, num_mel_bins]`` (``ASTFeatureExtractor``'s computation) of 16-kHz audio and
        the number of filterbank frames holding audio."""
        if audio.dim() != 2:
            raise ValueError(f"the audio encoder expects audio [B, N], got shape {tuple(audio.shape)}")
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = audio.float()
            if x.shape[-1] < _FBANK_WINDOW:
                raise ValueError(f"the audio encoder needs at least {_FBANK_WINDOW / AST_SAMPLE_RATE} s of audio")
            n = 1 + (x.shape[-1] - _FBANK_WINDOW) // _FBANK_SHIFT
            if n > self.max_length:
                raise ValueError(
                    f"{x.shape[-1] / AST_SAMPLE_RATE:g} s of audio give {n} filterbank frames, more than the AST's "
                    f"max_length={self.max_length} ({(self.max_length - 1) * 0.01 + 0.025:g} s): set a shorter "
                    "data.clip_duration or an encoder with a longer max_length"
                )
            # torchaudio.compliance.kaldi.fbank's numbers, for the whole batch at once (an exported graph keeps a
            # dynamic batch axis)
            feats = kaldi_fbank(x, AST_SAMPLE_RATE, self.num_mel_bins, window_type="hanning")
            feats = F.pad(feats, (0, 0, 0, self.max_length - n))
            return (feats - self.mean) / (2 * self.std), n

    def _frames(self, tokens: Tensor, n: int) -> Tensor:
        """``[B, 2 + f_dim * t_dim, D]`` tokens -> ``[B, T_e, D]``: patch tokens averaged over frequency, the time
        columns that start on audio."""
        frames = tokens[:, 2:].unflatten(1, (self.f_dim, self.t_dim)).mean(1)
        return frames[:, : min(self.t_dim, (n - 1) // self.time_stride + 1)]

    def network_forward(self, audio: Tensor) -> Tensor:
        feats, n = self.fbank(audio)
        return self._frames(self.model(input_values=feats).last_hidden_state, n).transpose(1, 2)

    def network_hidden_states(self, audio: Tensor) -> list[Tensor]:
        feats, n = self.fbank(audio)
        states = self.model(input_values=feats, output_hidden_states=True).hidden_states[1:]  # after each layer
        return [self._frames(s, n) for s in states]
