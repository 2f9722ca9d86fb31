"""Differentiable resampling of waveforms ``[..., N]``.

Two methods, both made of differentiable tensor ops (gradients flow to the input):

* ``"sinc"``: band-limited windowed-sinc interpolation, the output of ``torchaudio.functional.resample``
  (Hann window by default, ``lowpass_filter_width`` zero crossings, ``rolloff`` of Nyquist) and of the
  loader's resampling (:func:`sed.data.audio.resample`). The kernel is built once, a non-persistent buffer
  (it follows ``.to(device)`` and stays out of checkpoints), and applied with one strided ``conv1d``, so
  the layer runs on the GPU and exports to ONNX/TorchScript. Local (finite kernel), so edges are handled
  like zero padding. Output length ``ceil(N * new_freq / orig_freq)``.
* ``"fft"``: ideal band-limited resampling in the frequency domain: ``rfft``, keep/zero-pad the
  bins up to the new Nyquist, ``irfft``. Exact for periodic band-limited signals; assumes the
  clip is periodic, so a non-periodic signal shows ringing near both ends. Same output length.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import Tensor, nn

RESAMPLE_METHODS = ("sinc", "fft")


def fft_resample(x: Tensor, num: int) -> Tensor:
    """Resample the last axis of real ``x`` to ``num`` samples by Fourier-domain truncation/padding.

    The Nyquist bin of the shorter of the two lengths (when even) is split or joined so that the
    result is the band-limited periodic interpolation of ``x``.
    """
    n_in = x.shape[-1]
    if num == n_in:
        return x
    spec = torch.fft.rfft(x, dim=-1)
    n = min(num, n_in)
    keep = n // 2 + 1
    spec = spec[..., :keep]
    if n % 2 == 0:
        # The bin at n/2 is the Nyquist bin of the shorter signal. Downsampling: it stands for
        # both +-n/2 components of the input, so its (real) value is doubled (irfft discards the
        # imaginary part). Upsampling: the input's Nyquist bin is split evenly between the +-n/2
        # bins of the longer signal, i.e. halved.
        scale = torch.ones(keep, dtype=spec.real.dtype, device=spec.device)
        scale[-1] = 2.0 if num < n_in else 0.5
        spec = spec * scale
    pad = num // 2 + 1 - keep
    if pad > 0:
        spec = torch.nn.functional.pad(spec, (0, pad))
    return torch.fft.irfft(spec, n=num, dim=-1) * (num / n_in)


class Resample(nn.Module):
    """Resample waveforms ``[..., N]`` from ``orig_freq`` to ``new_freq`` (differentiable)."""

    def __init__(
        self,
        orig_freq: int,
        new_freq: int,
        method: str = "sinc",
        lowpass_filter_width: int = 6,
        rolloff: float = 0.99,
        resampling_method: str = "sinc_interp_hann",
        beta: float | None = None,
    ) -> None:
        super().__init__()
        if method not in RESAMPLE_METHODS:
            raise ValueError(f"Resample method={method!r} is not one of {RESAMPLE_METHODS}")
        if int(orig_freq) <= 0 or int(new_freq) <= 0:
            raise ValueError(f"Resample needs positive rates, got orig_freq={orig_freq}, new_freq={new_freq}")
        self.orig_freq = int(orig_freq)
        self.new_freq = int(new_freq)
        self.method = method
        self.lowpass_filter_width = int(lowpass_filter_width)
        self.rolloff = float(rolloff)
        self.resampling_method = resampling_method
        self.beta = beta
        self.gcd = math.gcd(self.orig_freq, self.new_freq)
        self.width = 0
        if method == "sinc" and self.orig_freq != self.new_freq:
            # torchaudio's kernel ([new/gcd, 1, taps]), built in float32 as the loader builds it (so both give the
            # same samples); torchaudio.transforms.Resample keeps it as a persistent buffer, which would add a key
            # to every checkpoint's state dict: this one is not saved.
            sinc = torchaudio.transforms.Resample(
                self.orig_freq,
                self.new_freq,
                resampling_method=resampling_method,
                lowpass_filter_width=self.lowpass_filter_width,
                rolloff=self.rolloff,
                beta=beta,
                dtype=torch.float32,
            )
            self.width = int(sinc.width)
            self.register_buffer("kernel", sinc.kernel.detach().clone(), persistent=False)

    def output_length(self, n_samples: int) -> int:
        """Number of output samples for ``n_samples`` input samples."""
        return math.ceil(n_samples * self.new_freq / self.orig_freq)

    def forward(self, wav: Tensor) -> Tensor:
        if self.orig_freq == self.new_freq:
            return wav
        if self.method == "sinc":
            return self._sinc(wav)
        return fft_resample(wav, self.output_length(wav.shape[-1]))

    def _sinc(self, wav: Tensor) -> Tensor:
        """torchaudio's polyphase application of the kernel (``_apply_sinc_resample_kernel``), with the output
        length computed in integers so that exporters see a constant."""
        if not wav.is_floating_point():
            raise TypeError(f"Resample expects a floating-point waveform, got {wav.dtype}")
        orig, new = self.orig_freq // self.gcd, self.new_freq // self.gcd
        shape = wav.shape
        n = shape[-1]
        x = wav.reshape(-1, n)
        x = torch.nn.functional.pad(x, (self.width, self.width + orig))
        y = torch.nn.functional.conv1d(x[:, None], self.kernel.to(x.dtype), stride=orig)
        y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : -(-new * n // orig)]
        return y.reshape(shape[:-1] + y.shape[-1:])

    def signature(self) -> dict[str, object]:
        """What changes the output, as plain values (part of the front-end signature)."""
        sig: dict[str, object] = {"orig_freq": self.orig_freq, "new_freq": self.new_freq, "method": self.method}
        if self.method == "sinc":
            sig.update(
                lowpass_filter_width=self.lowpass_filter_width,
                rolloff=self.rolloff,
                window=self.resampling_method,
                beta=self.beta,
            )
        return sig

    def extra_repr(self) -> str:
        return f"orig_freq={self.orig_freq}, new_freq={self.new_freq}, method={self.method!r}"
