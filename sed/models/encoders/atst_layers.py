"""The building blocks of ATST-Frame (:mod:`sed.models.encoders.atst`): its log-mel front-end and its transformer
layer, each computing exactly what the published code computes (checked against it by
``tests/models/encoders/test_atst.py``).

The front-end is the one ATST-SED and PretrainedSED put before ATST-Frame: a 64-bin power mel spectrogram of
16-kHz audio (1024-point STFT with a periodic Hann window, hop 160 = 10 ms, centred with reflect padding,
HTK mel scale from 60 to 7800 Hz, no filter normalisation), in dB (``10 log10``, floor ``1e-10``), cut 80 dB below
the clip's maximum, clamped to [-50, 80] dB and mapped linearly from [-79.6482, 50.6842] dB (the AudioSet range
the published model was trained with) to [-1, 1].

One difference, deliberate: the reference computes the 80-dB floor with torchaudio's ``AmplitudeToDB`` on a
``[B, n_mels, T]`` batch, which takes one maximum over the whole *batch*, so a clip's features depend on the other
clips it is batched with. Here the floor is per clip: equal to the reference for a batch of one (its inference
scripts) and to ``audiossl``'s own embedding API (which passes ``[B, 1, N]`` audio, hence per-clip maxima).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 160  # 10 ms
F_MIN, F_MAX = 60.0, 7800.0
TOP_DB = 80.0
DB_CLAMP = (-50.0, 80.0)
DB_RANGE = (-79.6482, 50.6842)  # mapped to [-1, 1]
LAYER_NORM_EPS = 1e-6


class ATSTMelFrontEnd(nn.Module):
    """Audio ``[B, N]`` at 16 kHz -> normalised log-mel ``[B, n_mels, N // 160 + 1]``, always in float32 (autocast
    off, even in a model cast to a lower precision: the dB conversion needs the precision). Its window and filter
    bank are non-persistent buffers: they are recomputed, never stored in checkpoints."""

    def __init__(self, n_mels: int = 64) -> None:
        super().__init__()
        self.n_mels = int(n_mels)
        window, fb = self._tables(torch.device("cpu"))
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("fb", fb, persistent=False)

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        import torchaudio

        fb = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, F_MIN, F_MAX, self.n_mels, SAMPLE_RATE, norm=None, mel_scale="htk"
        )
        return torch.hann_window(N_FFT, device=device), fb.to(device)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 (nn.Module's signature)
        """Moves follow the model; a cast to another precision does not round the window and filter bank."""
        super()._apply(fn, *args, **kwargs)
        if self.window.dtype != torch.float32:
            self.window, self.fb = self._tables(self.window.device)
        return self

    def forward(self, audio: Tensor) -> Tensor:
        if audio.dim() != 2:
            raise ValueError(f"ATST-Frame expects audio [B, N], got shape {tuple(audio.shape)}")
        if audio.shape[-1] <= N_FFT // 2:
            raise ValueError(
                f"ATST-Frame needs more than {N_FFT // 2} samples ({N_FFT // 2 / SAMPLE_RATE:g} s) "
                f"of audio, got {audio.shape[-1]}"
            )
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = (
                torch.stft(
                    audio.float(),
                    N_FFT,
                    HOP,
                    N_FFT,
                    self.window,
                    center=True,
                    pad_mode="reflect",
                    normalized=False,
                    onesided=True,
                    return_complex=True,
                )
                .abs()
                .pow(2.0)
            )
            mel = torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
            db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
            db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - TOP_DB).clamp(*DB_CLAMP)
            low, high = DB_RANGE
            return (db - low) / (high - low) * 2.0 - 1.0


class ATSTLayer(nn.Module):
    """One pre-norm transformer layer: multi-head self-attention then a GELU MLP, each a residual branch with
    dropout and stochastic depth (``drop_path``, a whole branch dropped per sample in training)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.drop_path = num_heads, attn_drop, drop_path
        self.attn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(dim, int(dim * mlp_ratio))
        self.ffn_out = nn.Linear(int(dim * mlp_ratio), dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x + self._skip(self.drop(self.out(att.transpose(1, 2).reshape(b, t, d))))
        hidden = self.drop(F.gelu(self.ffn_in(self.ffn_norm(x))))
        return x + self._skip(self.drop(self.ffn_out(hidden)))

    def _skip(self, branch: Tensor) -> Tensor:
        """Stochastic depth: in training, drop the branch of a sample with probability ``drop_path`` and scale the
        kept ones by ``1 / (1 - drop_path)``."""
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        mask = torch.floor(keep + torch.rand(branch.shape[0], 1, 1, dtype=branch.dtype, device=branch.device))
        return branch / keep * mask

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, attn_drop={self.attn_drop}, drop_path={self.drop_path}"
