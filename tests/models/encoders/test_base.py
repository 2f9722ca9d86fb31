"""The encoder interface on a tiny network of a user's: layer selection, resampling on the device, freezing and
fine-tuning (partial freezing, layer-wise learning rates, gradient checkpointing), the identity, the in-memory
cache, and building from a ``model.encoder`` node."""

from __future__ import annotations

import copy

import pytest
import torch
import torchaudio
from tiny_network import TinyNet

from sed.models.encoders import AudioEncoder, ModuleEncoder, build_encoder


def _encoder(**options) -> ModuleEncoder:
    torch.manual_seed(0)
    return ModuleEncoder(TinyNet(), **options)


def _audio(n: int = 3, seconds: float = 1.0, rate: int = 16000) -> torch.Tensor:
    torch.manual_seed(1)
    return 0.1 * torch.randn(n, int(seconds * rate))


def test_layer_selection_last_index_and_learned_weighted_sum() -> None:
    audio = _audio()
    last = _encoder().eval()
    net = last.model
    with torch.no_grad():
        states = net.hidden_states(audio)
        torch.testing.assert_close(last(audio), net(audio))
        assert last(audio).shape == (3, 8, 50) and last.frame_hop == 0.02 and last.dim == 8
        second = _encoder(layer=1).eval()
        torch.testing.assert_close(second(audio), states[1].transpose(1, 2))
        torch.testing.assert_close(_encoder(layer=-3).eval()(audio), states[0].transpose(1, 2))
        weighted = _encoder(layer="weighted").eval()
        cached = weighted.compute(audio)
        assert cached.shape == (3, 3, 8, 50)  # every layer is kept, so the learned weights can change
        weighted.layer_weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
        w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
        expected = sum(wi * s for wi, s in zip(w, states)).transpose(1, 2)
        torch.testing.assert_close(weighted(audio), expected)
    with pytest.raises(ValueError, match="model.encoder.layer=5: the encoder has 3 layers"):
        _encoder(layer=5)
    with pytest.raises(ValueError, match="model.encoder.layer must be"):
        _encoder(layer="middle")


def test_the_weighted_sum_trains_while_the_network_is_frozen() -> None:
    enc = _encoder(layer="weighted").train()
    enc(_audio()).sum().backward()
    assert enc.layer_weights.grad is not None and enc.layer_weights.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())


def test_audio_at_another_rate_is_resampled_on_the_device() -> None:
    enc32 = _encoder(sample_rate=32000).eval()
    audio = _audio(2, rate=32000)
    ref = torchaudio.functional.resample(audio, 32000, 16000)
    with torch.no_grad():
        torch.testing.assert_close(enc32(audio), _encoder().eval()(ref), atol=1e-5, rtol=1e-4)


def test_frozen_network_gets_no_gradient_and_stays_in_evaluation_mode() -> None:
    enc = _encoder().train()
    assert enc.frozen and not enc.model.training
    assert not enc(_audio()).requires_grad  # nothing to backpropagate into
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert not enc.will_finetune


def test_finetuning_from_an_epoch_with_the_lowest_layers_frozen() -> None:
    enc = _encoder(finetune_after_epoch=2, freeze_layers=1).train()
    assert enc.will_finetune
    assert not enc.set_epoch(1) and enc.frozen
    enc.embed(_audio(), cache=True)
    assert enc.cache_size == 3
    assert enc.set_epoch(2) and not enc.frozen and enc.cache_size == 0 and enc.model.training
    enc(_audio()).sum().backward()
    net = enc.model
    assert net.front.weight.grad is None  # below the first block
    assert all(p.grad is None for p in net.blocks[0].parameters())  # freeze_layers=1
    assert all(p.grad is not None for p in net.blocks[2].parameters()) and net.norm.weight.grad is not None
    enc.embed(_audio(), cache=True)
    assert enc.cache_size == 0  # a network that changes is never cached
    with pytest.raises(ValueError, match="finetune_after_epoch needs model.encoder.frozen=true"):
        _encoder(frozen=False, finetune_after_epoch=1)


def test_layerwise_learning_rates() -> None:
    enc = _encoder(frozen=False, lr=1e-4, layer_decay=0.5)
    groups = {g["name"]: g for g in enc.param_groups(lr=1e-3)}
    net = enc.model
    # Top (final norm, depth 4) and top block (3) at lr, each block below halved, the front-end below block 1.
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(
        {
            "encoder.depth4": 1e-4,
            "encoder.depth3": 1e-4,
            "encoder.depth2": 5e-5,
            "encoder.depth1": 2.5e-5,
            "encoder.depth0": 1.25e-5,
        }
    )
    assert {id(p) for p in groups["encoder.depth0"]["params"]} == {id(p) for p in net.front.parameters()}
    assert {id(p) for p in groups["encoder.depth2"]["params"]} == {id(p) for p in net.blocks[1].parameters()}
    assert sum(len(g["params"]) for g in groups.values()) == len(list(net.parameters()))
    # Without its own rate the model's; frozen lowest blocks are left out of the optimiser.
    partial = _encoder(frozen=False, freeze_layers=2).param_groups(lr=1e-3)
    assert [g["name"] for g in partial] == ["encoder.depth4", "encoder.depth3"]
    assert all(g["lr"] == 1e-3 for g in partial)


def test_gradient_checkpointing_gives_the_same_gradients_and_keys() -> None:
    audio = _audio(2)
    grads = []
    for ckpt in (False, True):
        enc = _encoder(frozen=False, gradient_checkpointing=ckpt).train()
        torch.manual_seed(5)  # the same dropout draws (recomputation restores the RNG state)
        enc(audio).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters()})
        keys = list(enc.state_dict())
    assert grads[0].keys() == grads[1].keys() and keys == list(_encoder().state_dict())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    twin = copy.deepcopy(enc)  # the teacher's copy
    assert twin.model.blocks[0] is not enc.model.blocks[0]
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(audio), enc.eval()(audio))


def test_identity_follows_weights_and_options() -> None:
    enc = _encoder()
    assert enc.identity == _encoder().identity == copy.deepcopy(enc).identity
    assert _encoder(layer=1).identity != enc.identity
    assert _encoder(sample_rate=32000).identity != enc.identity
    assert _encoder(cache_dtype="float16").identity != enc.identity
    assert _encoder(lr=1e-5, cache=False).identity == enc.identity  # options that do not change the output
    changed = _encoder()
    with torch.no_grad():
        changed.model.blocks[1].linear1.weight[0, 0] += 1e-6
    changed._identity = None
    assert changed.identity != enc.identity


def test_memory_cache_is_keyed_by_the_samples() -> None:
    enc = _encoder()
    audio = _audio(4)
    first = enc.embed(audio, cache=True)
    assert enc.cache_size == 4 and enc.counts["computed"] == 4
    again = enc.embed(audio[[2, 0]], cache=True)
    assert enc.counts["memory"] == 2 and enc.counts["computed"] == 4
    torch.testing.assert_close(again, first[[2, 0]])
    crop = audio[:1, 160:].contiguous()
    enc.embed(crop, cache=True)
    assert enc.counts["computed"] == 5
    enc.embed(audio[:2], cache=True, cacheable=[False, True])  # a clip that differs per epoch is not looked up
    assert enc.counts["varying"] == 1 and enc.counts["computed"] == 5 and enc.counts["memory"] == 3
    enc.embed(_audio(1, seconds=0.5))  # without cache=True nothing is stored
    assert enc.cache_size == 5


def test_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    enc = ModuleEncoder(TinyNet(dropout=0.0), frozen=False, layer="weighted").train()
    audio = _audio(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(audio)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)
    with torch.no_grad():
        torch.testing.assert_close(out.float(), enc.eval()(audio), atol=0.1, rtol=0.1)


def test_build_from_a_node_splits_the_interface_keys() -> None:
    enc = build_encoder(
        {
            "_target_": "tiny_network.TinyNet",
            "dim": 16,
            "n_layers": 2,
            "layer": 0,
            "frozen": False,
            "sample_rate": 32000,
        }
    )
    assert isinstance(enc, AudioEncoder) and enc.dim == 16 and enc.n_layers == 2 and enc.layer == 0
    assert not enc.frozen and enc.sample_rate == 32000 and enc.native_rate == 16000
    assert enc.manifest()["description"] == {"_target_": "tiny_network.TinyNet", "dim": 16, "n_layers": 2}
    with pytest.raises(ValueError, match=r"model.encoder._target_=nowhere.Net: cannot import it"):
        build_encoder({"_target_": "nowhere.Net"})
    with pytest.raises(TypeError, match=r"model.encoder._target_=.*TinyNet: .*unexpected keyword"):
        build_encoder({"_target_": "tiny_network.TinyNet", "width": 3})
    with pytest.raises(TypeError, match="Identity does not declare dim, sample_rate, frame_hop"):
        build_encoder({"_target_": "torch.nn.Identity"})
