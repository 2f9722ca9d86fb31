"""The frame-level model (encoder + light head): encoder frames brought to the label grid, both heads, the class
mask of several datasets, and its input errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sed.models.frame_level import FrameLevelSED, to_frames

sys.path.insert(0, str(Path(__file__).parent / "encoders"))  # tiny_network: a user's encoder, shared with those tests
ENCODER = {"_target_": "tiny_network.TinyNet", "dim": 8, "n_layers": 2}


def _model(**keys) -> FrameLevelSED:
    torch.manual_seed(0)
    return FrameLevelSED(n_classes=3, n_features=16, encoder=ENCODER, rnn_hidden=4, rnn_layers=1, **keys).eval()


def test_encoder_frames_are_averaged_or_interpolated_onto_the_label_grid() -> None:
    x = torch.arange(8.0).view(1, 1, 8)
    torch.testing.assert_close(to_frames(x, 4), torch.tensor([[[0.5, 2.5, 4.5, 6.5]]]))
    up = to_frames(torch.tensor([[[0.0, 2.0]]]), 4)
    assert up.shape == (1, 1, 4) and up[0, 0, 0] == 0.0 and up[0, 0, -1] == 2.0


@pytest.mark.parametrize("head", ["linear", "bigru"])
def test_outputs_on_the_label_grid_from_audio_or_embeddings(head) -> None:
    model = _model(head=head)
    audio, feats = 0.1 * torch.randn(2, 16000), torch.randn(2, 16, 63)  # 63 front-end frames: 15 outputs at 4
    with torch.no_grad():
        out = model(feats, audio=audio)
        again = model(feats, embeddings=model.audio_encoder.compute(audio))
    assert out.strong.shape == (2, 3, 15) and out.weak.shape == (2, 3)
    torch.testing.assert_close(out.strong, again.strong)
    torch.testing.assert_close(torch.sigmoid(out.weak_logits), out.weak, atol=1e-6, rtol=1e-5)


def test_a_masked_class_gets_the_attention_floor() -> None:
    model = _model(head="linear")
    audio, feats = 0.1 * torch.randn(2, 16000), torch.randn(2, 16, 63)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        free, masked = model(feats, audio=audio), model(feats, audio=audio, class_mask=mask)
    torch.testing.assert_close(masked.strong, free.strong)
    torch.testing.assert_close(masked.weak[1], free.weak[1])
    assert not torch.allclose(masked.weak[0, :2], free.weak[0, :2])  # the annotated classes share the attention


def test_bad_input_is_named() -> None:
    model = _model()
    with pytest.raises(ValueError, match="needs the encoder embeddings or the audio"):
        model(torch.randn(1, 16, 63))
    with pytest.raises(ValueError, match=r"embeddings must be \[B=1, D=8, T_e\]"):
        model(torch.randn(1, 16, 63), embeddings=torch.randn(1, 5, 10))
    with pytest.raises(ValueError, match="model.head must be one of"):
        _model(head="transformer")
