"""BEATs and ATST-Frame behind the encoder interface, from checkpoint files in their published formats (the
families' reference fixtures): the same numbers as the family modules, layer-wise groups that follow each
network's depth, gradient checkpointing, and one-line errors naming model.encoder.path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sed.models.encoders import build_encoder
from sed.models.encoders.atst import load_atst_frame
from sed.models.encoders.beats import load_beats
from sed.models.encoders.published import ATSTFrameEncoder, BEATsEncoder

FIXTURES = Path(__file__).parent / "fixtures"
BEATS = FIXTURES / "beats_deepnorm.pt"
ATST = FIXTURES / "atst_frame_tiny.ckpt"


def _audio(n: int = 2, seconds: float = 1.0, rate: int = 16000) -> torch.Tensor:
    torch.manual_seed(1)
    return 0.1 * torch.randn(n, int(seconds * rate))


@pytest.mark.parametrize(
    "cls, path, load", [(BEATsEncoder, BEATS, load_beats), (ATSTFrameEncoder, ATST, load_atst_frame)]
)
def test_published_checkpoint_behind_the_interface(cls, path, load) -> None:
    enc = cls(path=str(path)).eval()
    net = load(path).eval()
    audio = _audio()
    with torch.no_grad():
        torch.testing.assert_close(enc(audio), net(audio))
        states = net.hidden_states(audio)
        torch.testing.assert_close(cls(path=str(path), layer=0).eval()(audio), states[0].transpose(1, 2))
        weighted = cls(path=str(path), layer="weighted").eval()
        torch.testing.assert_close(weighted(audio), sum(states).transpose(1, 2) / len(states))  # equal weights
    assert enc.dim == net.dim and enc.frame_hop == net.frame_hop and enc.n_layers == net.n_layers == 2
    assert enc.identity == cls(path=str(path)).identity  # the weights, not the path, are the identity
    built = build_encoder(
        {"_target_": f"sed.models.encoders.published.{cls.__name__}", "path": str(path), "sample_rate": 32000}
    )
    assert built.sample_rate == 32000 and built.native_rate == 16000 and built.identity != enc.identity


def test_layer_groups_follow_each_network() -> None:
    beats = BEATsEncoder(path=str(BEATS), frozen=False, lr=1.0, layer_decay=0.5)
    lr = {id(p): g["lr"] for g in beats.param_groups(1.0) for p in g["params"]}
    net = beats.model
    # Post-norm BEATs: the encoder's LayerNorm (registered last) runs before the first layer: the front-end's rate.
    assert lr[id(net.encoder.layer_norm.weight)] == lr[id(net.patch_embedding.weight)] == 0.25
    assert lr[id(net.encoder.layers[0].fc1.weight)] == 0.5 and lr[id(net.encoder.layers[1].fc1.weight)] == 1.0
    atst = ATSTFrameEncoder(path=str(ATST), frozen=False, lr=1.0, layer_decay=0.5, freeze_layers=1)
    lr = {id(p): g["lr"] for g in atst.param_groups(1.0) for p in g["params"]}
    net = atst.model
    assert lr[id(net.out_norm.weight)] == lr[id(net.layers[1].qkv.weight)] == 1.0
    assert id(net.layers[0].qkv.weight) not in lr and id(net.positions) not in lr  # frozen lowest layer


@pytest.mark.parametrize(
    "cls, config",
    [
        (
            BEATsEncoder,
            {
                "encoder_layers": 2,
                "encoder_embed_dim": 16,
                "encoder_ffn_embed_dim": 32,
                "embed_dim": 16,
                "encoder_attention_heads": 2,
                "conv_pos": 8,
                "conv_pos_groups": 4,
                "dropout": 0.1,
            },
        ),
        (ATSTFrameEncoder, {"embed_dim": 16, "depth": 2, "num_heads": 2, "drop_rate": 0.1, "drop_path_rate": 0.1}),
    ],
)
def test_gradient_checkpointing_of_each_family(cls, config) -> None:
    audio = _audio()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = cls(config=config, frozen=False, gradient_checkpointing=ckpt).train()
        torch.manual_seed(3)
        enc(audio).square().mean().backward()
        grads.append({n: p.grad for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("cls, other", [(BEATsEncoder, ATST), (ATSTFrameEncoder, BEATS)])
def test_bad_checkpoint_paths_are_one_line_errors(cls, other, tmp_path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(BEATS.read_bytes()[:5000])
    for path in (tmp_path / "absent.pt", truncated, other):
        with pytest.raises(ValueError) as err:
            cls(path=str(path))
        message = str(err.value)
        assert message.startswith("model.encoder.path=") and str(path) in message and "\n" not in message
    with pytest.raises(ValueError, match="model.encoder needs a path"):
        cls()
    with pytest.raises(ValueError, match="model.encoder.config"):
        cls(config={"no_such_key": 1})


def test_beats_tokens_are_the_baselines_frames() -> None:
    """frames=tokens: the patch tokens as the DCASE 2024 baseline stores them (the reference's extract_features,
    [B, D, T' * 8]); frames=columns averages the 8 tokens of each time column."""
    tokens = BEATsEncoder(path=str(BEATS), frames="tokens").eval()
    columns = BEATsEncoder(path=str(BEATS)).eval()
    net = load_beats(BEATS).eval()
    audio = _audio(seconds=1.5)
    with torch.no_grad():
        got = tokens(audio)
        torch.testing.assert_close(got, net.token_states(audio)[-1].transpose(1, 2))
        torch.testing.assert_close(columns(audio), got.unflatten(-1, (-1, 8)).mean(-1))
    assert tokens.frame_hop == pytest.approx(columns.frame_hop / 8) and tokens.identity != columns.identity
    with pytest.raises(ValueError, match="model.encoder.frames"):
        BEATsEncoder(path=str(BEATS), frames="patches")
