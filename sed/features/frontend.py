"""Audio front-ends: waveform -> clamped log features ``[B, F, T']``.

Three kinds share one set of conventions so that they are interchangeable in a config:

* ``"mel"`` (default, DESED baseline): magnitude (``power=1``) mel spectrogram, Hamming window
  (``periodic=False``), HTK mel scale, no filterbank normalisation (torchaudio defaults), centred
  frames with reflect padding; then ``20*log10(max(x, amin))`` and a clamp to ``db_range``.
  ``F = n_mels``.
* ``"mfcc"``: the clamped log-mel above followed by an orthonormal DCT-II over the mel axis,
  keeping the first ``n_mfcc`` coefficients (``F = n_mfcc``). The clamp acts on the log-mel (dB),
  before the DCT; coefficients themselves are not clamped.
* ``"stft"``: log-magnitude STFT with the same window, log and clamp (``F = n_fft // 2 + 1``);
  ``n_mels``/``f_min``/``f_max``/``n_mfcc`` are unused.

The number of frames is ``T' = 1 + N // hop_length`` (centred STFT), e.g. 626 for 10 s at 16 kHz
with hop 256.

``input_sample_rate`` (``features.input_sample_rate``) makes resampling the first layer: the front-end takes
audio at that rate and resamples it to ``sample_rate`` (the model's rate, which the mel filterbank, the hop and
the labels are defined at) with :class:`sed.features.resample.Resample` (windowed sinc, the kernel the loader uses), on
the device and inside the autograd graph; an exported model then takes audio at the input rate. ``N`` above
is then the resampled length, ``ceil(N_in * sample_rate / input_sample_rate)``. Features are always computed in float32 with autocast disabled: a half-precision
STFT and ``log10`` lose too much precision.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn

from sed.features.resample import Resample

logger = logging.getLogger(__name__)

FRONTEND_KINDS = ("mel", "mfcc", "stft")

#: Bumped whenever the feature computation changes in a way the arguments do not capture,
#: so that scalers fitted with an older front-end are refused.
FRONTEND_VERSION = 1


class FrontEnd(nn.Module):
    """Waveform ``[B, N]`` (or ``[N]``) -> clamped log features ``[B, F, T']`` (or ``[F, T']``)."""

    def __init__(
        self,
        kind: str = "mel",
        sample_rate: int = 16000,
        n_fft: int = 2048,
        win_length: int = 2048,
        hop_length: int = 256,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = 8000.0,
        n_mfcc: int = 40,
        db_range: tuple[float, float] = (-50.0, 80.0),
        amin: float = 1e-5,
        input_sample_rate: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in FRONTEND_KINDS:
            raise ValueError(f"FrontEnd kind={kind!r} is not one of {FRONTEND_KINDS}")
        if win_length > n_fft:
            raise ValueError(f"FrontEnd win_length={win_length} must be <= n_fft={n_fft}")
        if hop_length <= 0 or sample_rate <= 0:
            raise ValueError(f"FrontEnd needs hop_length > 0 and sample_rate > 0, got {hop_length}, {sample_rate}")
        f_max_eff = float(sample_rate) / 2 if f_max is None else float(f_max)
        if kind != "stft" and not 0.0 <= f_min < f_max_eff <= sample_rate / 2:
            raise ValueError(
                f"FrontEnd needs 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}, "
                f"sample_rate={sample_rate}"
            )
        lo, hi = (float(v) for v in db_range)
        if not lo < hi:
            raise ValueError(f"FrontEnd db_range must be (low, high) with low < high, got {db_range}")
        if amin <= 0:
            raise ValueError(f"FrontEnd amin must be > 0, got {amin}")
        if kind == "mfcc" and not 0 < n_mfcc <= n_mels:
            raise ValueError(f"FrontEnd n_mfcc={n_mfcc} must be in [1, n_mels={n_mels}]")
        if input_sample_rate is not None and (isinstance(input_sample_rate, str) or int(input_sample_rate) <= 0):
            raise ValueError(
                f"FrontEnd input_sample_rate={input_sample_rate!r} must be a rate in Hz > 0 or None (the model's rate); "
                "'auto' is resolved by train.py from the data (SEDDataModule.resolve_input_sample_rate)"
            )

        self.kind = kind
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = f_max_eff
        self.n_mfcc = int(n_mfcc)
        self.db_range = (lo, hi)
        self.amin = float(amin)
        rate = None if input_sample_rate is None else int(input_sample_rate)
        #: The rate the front-end takes audio at; None (or the model's rate) means no resampling layer.
        self.input_sample_rate = None if rate == self.sample_rate else rate
        self.resampler: Resample | None = (
            Resample(rate, self.sample_rate) if self.input_sample_rate is not None else None
        )

        common: dict[str, Any] = dict(
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            window_fn=torch.hamming_window,
            wkwargs={"periodic": False},
            power=1.0,
            center=True,
            pad_mode="reflect",
        )
        if kind == "stft":
            self.spec: nn.Module = torchaudio.transforms.Spectrogram(**common)
        else:
            self.spec = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate,
                f_min=self.f_min,
                f_max=self.f_max,
                n_mels=self.n_mels,
                norm=None,
                mel_scale="htk",
                **common,
            )
        # AmplitudeToDB has no amin argument; set it once here (db_multiplier stays log10(1) = 0).
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="amplitude", top_db=None)
        self.to_db.amin = self.amin
        if kind == "mfcc":
            # [n_mels, n_mfcc], orthonormal DCT-II; a buffer so it follows .to(device).
            dct = torchaudio.functional.create_dct(self.n_mfcc, self.n_mels, norm="ortho")
            self.register_buffer("dct", dct, persistent=False)

    @property
    def n_features(self) -> int:
        """Number of feature bins ``F`` in the output."""
        if self.kind == "mel":
            return self.n_mels
        if self.kind == "mfcc":
            return self.n_mfcc
        return self.n_fft // 2 + 1

    @property
    def input_rate(self) -> int:
        """The sample rate of the audio :meth:`forward` takes: ``input_sample_rate``, else the model's rate."""
        return self.input_sample_rate or self.sample_rate

    def resampled_length(self, n_samples: int) -> int:
        """Samples at the model's rate of a waveform of ``n_samples`` samples at :attr:`input_rate`."""
        if self.input_sample_rate is None:
            return int(n_samples)
        return -(-int(n_samples) * self.sample_rate // self.input_sample_rate)

    def n_frames(self, n_samples: int) -> int:
        """Number of output frames for a waveform of ``n_samples`` samples (at :attr:`input_rate`)."""
        return 1 + self.resampled_length(n_samples) // self.hop_length

    def resample(self, wav: Tensor) -> Tensor:
        """Audio at :attr:`input_rate` -> audio at the model's rate (the same tensor when they agree)."""
        return wav if self.resampler is None else self.resampler(wav)

    def signature(self) -> dict[str, Any]:
        """Everything that changes the features, as plain Python values (for the scaler check)."""
        sig: dict[str, Any] = {
            "kind": self.kind,
            "version": FRONTEND_VERSION,
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "window": "hamming_symmetric",
            "power": 1.0,
            "db_range": [self.db_range[0], self.db_range[1]],
            "amin": self.amin,
            "n_features": self.n_features,
        }
        if self.kind in ("mel", "mfcc"):
            sig.update(n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, mel_scale="htk", mel_norm=None)
        if self.kind == "mfcc":
            sig.update(n_mfcc=self.n_mfcc, dct="ortho")
        if self.resampler is not None:  # absent otherwise, so signatures saved before this key existed still match
            sig.update(input_sample_rate=self.input_sample_rate, resampler=self.resampler.signature())
        return sig

    def magnitude(self, wav: Tensor) -> Tensor:
        """The linear stage: magnitude (mel) spectrogram ``[B, bins, T']`` in float32, before the log, of audio at
        :attr:`input_rate` (resampled to the model's rate first when they differ)."""
        if wav.dim() not in (1, 2):
            raise ValueError(f"FrontEnd expects a waveform [B, N] or [N], got shape {tuple(wav.shape)}")
        if self.resampler is not None:
            with torch.autocast(device_type=wav.device.type, enabled=False):
                wav = self.resampler(wav.float())
        min_len = self.n_fft // 2 + 1  # reflect padding needs more samples than n_fft // 2
        if wav.shape[-1] < min_len:
            at = f" after resampling to {self.sample_rate} Hz" if self.resampler is not None else ""
            raise ValueError(
                f"FrontEnd: waveform has {wav.shape[-1]} samples{at}, fewer than n_fft // 2 + 1 = {min_len} "
                f"(n_fft={self.n_fft})"
            )
        with torch.autocast(device_type=wav.device.type, enabled=False):
            return self.spec(wav.float())

    def log(self, spec: Tensor) -> Tensor:
        """The log stage: clamped dB of a :meth:`magnitude` output (then the DCT for ``mfcc``)."""
        with torch.autocast(device_type=spec.device.type, enabled=False):
            feats = self.to_db(spec.float()).clamp(min=self.db_range[0], max=self.db_range[1])
            if self.kind == "mfcc":
                # [.., n_mels, T] -> [.., T, n_mels] @ [n_mels, n_mfcc] -> [.., n_mfcc, T]
                feats = torch.matmul(feats.transpose(-1, -2), self.dct).transpose(-1, -2)
        return feats

    def forward(self, wav: Tensor) -> Tensor:
        return self.log(self.magnitude(wav))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.signature().items())


def input_clip_samples(clip_duration: float, input_rate: int, model_rate: int) -> int:
    """Samples of a ``clip_duration``-second clip at ``input_rate`` whose resampling to ``model_rate`` gives exactly
    the model's clip (``round(clip_duration * model_rate)`` samples, what the labels are framed on).

    Raises ``ValueError`` naming the keys when no such length exists (the duration is not a whole number of samples
    at the input rate), since then the features would gain or lose a frame against the labels.
    """
    n_in = round(float(clip_duration) * int(input_rate))
    n_model = round(float(clip_duration) * int(model_rate))
    if int(input_rate) == int(model_rate):
        return n_model
    if -(-n_in * int(model_rate) // int(input_rate)) != n_model or not math.isclose(
        n_in, float(clip_duration) * int(input_rate), abs_tol=1e-6
    ):
        raise ValueError(
            f"data.clip_duration={clip_duration} s is not a whole number of samples at features.input_sample_rate="
            f"{input_rate} Hz ({float(clip_duration) * int(input_rate):g}): the clip resampled in the model would "
            f"not be the {n_model} samples the labels are framed on at {model_rate} Hz; choose a clip duration that "
            "is a whole number of samples at both rates"
        )
    return n_in
