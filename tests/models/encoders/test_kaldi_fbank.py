"""The batched Kaldi filterbank against torchaudio's Kaldi-compatible one, waveform by waveform."""

from __future__ import annotations

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from sed.models.encoders.kaldi_fbank import fbank_frames, kaldi_fbank


@pytest.mark.parametrize("sample_rate, n_mels, n", [(16000, 128, 24000), (16000, 64, 16123), (22050, 80, 9000)])
def test_equals_torchaudio_kaldi_fbank(sample_rate: int, n_mels: int, n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    audio = 3000 * torch.randn(3, n, generator=generator)
    audio[1] *= torch.linspace(0, 1, n) ** 4  # quiet start: energies near the log floor
    audio[2, : n // 2] = 0.0  # digital silence: the epsilon floor itself
    expected = torch.stack([kaldi.fbank(row[None], num_mel_bins=n_mels, sample_frequency=sample_rate) for row in audio])
    ours = kaldi_fbank(audio, sample_rate, n_mels)
    assert ours.shape == expected.shape == (3, fbank_frames(n, sample_rate), n_mels)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_frame_count_and_short_audio() -> None:
    assert [fbank_frames(n, 16000) for n in (399, 400, 559, 560, 160000)] == [0, 1, 1, 2, 998]
    with pytest.raises(ValueError, match="shorter than one 25-ms window"):
        kaldi_fbank(torch.zeros(1, 399))
