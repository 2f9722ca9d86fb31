"""ATST-Frame: front-end and every layer's output against the published code (fixture), the published checkpoint
layouts, errors naming model.encoder.path, frame timing, inputs longer than the trained length, gradients, bf16."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from sed.models.encoders.atst import ATSTFrame, CheckpointError, load_atst_frame, save_atst_frame

FIXTURES = Path(__file__).parent / "fixtures"
CKPT = FIXTURES / "atst_frame_tiny.ckpt"
SR = 16000


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "atst_frame_tiny_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def audio(reference) -> torch.Tensor:
    return reference["pcm"].float() / 32768  # [2, 2.5 s]


@pytest.fixture(scope="module")
def model() -> ATSTFrame:
    return load_atst_frame(CKPT).eval()


def _tiny(**config) -> ATSTFrame:
    torch.manual_seed(0)
    return ATSTFrame({"embed_dim": 32, "depth": 2, "num_heads": 2, **config}).eval()


def _noise(seconds: float, n: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(n, int(seconds * SR), generator=torch.Generator().manual_seed(1))


def test_front_end_is_the_reference_one(model, audio, reference) -> None:
    torch.testing.assert_close(model.mel(audio[:, :SR]), reference["mel_short"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.mel(audio), reference["mel_long"], atol=1e-5, rtol=0)


def test_every_layer_and_the_features_are_the_reference_ones(model, audio, reference) -> None:
    with torch.no_grad():
        hidden = model.hidden_states(audio[:, :SR])
        features = model(audio[:, :SR])
    assert model.config["spec_w"] == 101 and model.max_frames == 25  # 1 s is the trained length here
    assert len(hidden) == model.n_layers == 2 and model.dim == 32
    torch.testing.assert_close(torch.stack(hidden, 1), reference["hidden_short"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features, reference["hidden_short"][:, -1].transpose(1, 2), atol=1e-5, rtol=0)


def test_longer_input_is_encoded_in_trained_length_pieces(model, audio, reference) -> None:
    # 2.5 s with 1-s positions: two pieces of 100 mel frames (1 s) then the 51-frame rest, as documented.
    with torch.no_grad():
        hidden = torch.stack(model.hidden_states(audio), 1)
    assert hidden.shape[2] == model.n_frames(audio.shape[-1]) == 25 + 25 + 12
    torch.testing.assert_close(hidden, reference["hidden_long"], atol=1e-5, rtol=0)


def test_frame_hop_agrees_with_the_frames_of_10_s() -> None:
    enc = _tiny()  # the published 10-s positions (spec_w=1001)
    assert enc.sample_rate == 16000 and enc.frame_hop == pytest.approx(0.04) and enc.max_frames == 250
    with torch.no_grad():
        for seconds in (10.0, 25.0):  # 25 s: two 10-s pieces and a 5-s rest
            frames = enc(_noise(seconds)).shape[-1]
            assert frames == enc.n_frames(int(seconds * SR)) and frames * enc.frame_hop == pytest.approx(seconds)


def test_a_clip_does_not_depend_on_its_batch() -> None:
    # Per-clip 80-dB floor (the reference's is batch-wide; documented): a quiet clip batched with a loud one,
    # whose maximum (36 dB) would lift the quiet clip's floor above -50 dB (its mel changes by up to 0.09).
    enc = _tiny()
    loud, quiet = 5 * _noise(2.0), 0.02 * _noise(2.0)
    quiet[:, : SR // 2] = 0
    with torch.no_grad():
        batched = enc(torch.cat([loud, quiet]))
        torch.testing.assert_close(batched[1:], enc(quiet), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", ["release", "audiossl_finetuned", "pretrained_sed"])
def test_published_layouts_load(layout: str, tmp_path: Path) -> None:
    # 128 dims, 2 heads: head size 64 as in every published model, which is what a file without
    # hyper-parameters gives.
    enc = _tiny(embed_dim=128, depth=1, spec_w=101)
    weights = enc.reference_state_dict()
    if layout == "release":  # the pretraining checkpoint: teacher and student, projector, hyper-parameters
        state = {
            **{"model.teacher.encoder." + k: v for k, v in weights.items()},
            **{"model.student.encoder." + k: torch.zeros_like(v) for k, v in weights.items()},
            "model.teacher.projector.0.weight": torch.zeros(3, 128),
        }
        payload = {"state_dict": state, "epoch": 3, "hyper_parameters": {"arch": "small", "n_mels": 64, "patch_w": 4}}
    elif layout == "audiossl_finetuned":  # a downstream module, final norm under its older name `norm`
        weights = {("norm" + k[10:] if k.startswith("norm_frame") else k): v for k, v in weights.items()}
        payload = {
            "state_dict": {
                **{"encoder.encoder." + k: v for k, v in weights.items()},
                "head.weight": torch.zeros(10, 128),
            }
        }
    else:  # PretrainedSED: a plain state dict of the prediction wrapper
        payload = {
            **{"model.atst." + k: v for k, v in weights.items()},
            "strong_head.weight": torch.zeros(447, 128),
            "strong_head.bias": torch.zeros(447),
            "weak_head.bias": torch.zeros(527),
        }
    torch.save(payload, tmp_path / "enc.pt")
    loaded = load_atst_frame(tmp_path / "enc.pt").eval()
    assert loaded.config == enc.config
    audio = _noise(1.5, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio), enc(audio), atol=0, rtol=0)


def test_save_writes_the_release_layout_and_round_trips(model, audio, tmp_path: Path) -> None:
    save_atst_frame(model, tmp_path / "copy.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["copy.ckpt"]
    saved, published = (torch.load(p, weights_only=True)["state_dict"] for p in (tmp_path / "copy.ckpt", CKPT))
    assert saved.keys() == published.keys() and all(torch.equal(saved[k], published[k]) for k in saved)
    again = load_atst_frame(tmp_path / "copy.ckpt", overrides={"drop_path_rate": 0.1}).eval()
    assert again.layers[-1].drop_path == pytest.approx(0.1)
    with torch.no_grad():
        torch.testing.assert_close(again(audio), model(audio), atol=0, rtol=0)


def _corrupt(kind: str, path: Path) -> None:
    if kind == "truncated":
        path.write_bytes(CKPT.read_bytes()[: CKPT.stat().st_size // 2])
    elif kind == "not torch":
        path.write_text("not a checkpoint\n")
    elif kind == "unsafe":
        torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(arch="base")}, path)
    elif kind == "beats":
        torch.save({"cfg": {"encoder_layers": 12}, "model": {"encoder.layers.0.fc1.weight": torch.zeros(2, 2)}}, path)
    elif kind == "missing keys":
        payload = torch.load(CKPT, weights_only=True)
        del payload["state_dict"]["model.teacher.encoder.blocks.1.mlp.fc2.weight"]
        torch.save(payload, path)
    elif kind == "extra key":
        payload = torch.load(CKPT, weights_only=True)
        payload["state_dict"]["model.teacher.encoder.prompt_embed"] = torch.zeros(1, 4, 32)
        torch.save(payload, path)
    elif kind == "other model":
        torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(2)}}, path)


@pytest.mark.parametrize(
    "kind, says",
    [
        ("absent", "no such file"),
        ("directory", "a directory"),
        ("truncated", "unreadable"),
        ("not torch", "unreadable"),
        ("unsafe", "argparse.Namespace"),
        ("beats", "a BEATs checkpoint"),
        ("missing keys", "missing keys [blocks.1.mlp.fc2.weight]"),
        ("extra key", "prompt tokens"),
        ("other model", "no ATST-Frame weights"),
    ],
)
def test_bad_checkpoints_name_model_encoder_path(kind: str, says: str, tmp_path: Path) -> None:
    path = tmp_path / ("dir" if kind == "directory" else "enc.ckpt")
    if kind == "directory":
        path.mkdir()
    _corrupt(kind, path)
    with pytest.raises(CheckpointError) as err:
        load_atst_frame(path)
    assert f"model.encoder.path={path}" in str(err.value) and says in str(err.value)
    assert "\n" not in str(err.value)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.encoder.config: unknown ATST-Frame key\(s\) \['heads'\]"):
        ATSTFrame({"heads": 4})
    with pytest.raises(ValueError, match="model.encoder.config.patch_h=16"):
        ATSTFrame({"patch_h": 16})
    with pytest.raises(ValueError, match="embed_dim=30 is not a multiple of num_heads=4"):
        ATSTFrame({"embed_dim": 30, "num_heads": 4})
    with pytest.raises(ValueError, match=r"model.encoder.config: \['depth'\] cannot be set"):
        load_atst_frame(CKPT, overrides={"depth": 4})
    with pytest.raises(ValueError, match="more than 512 samples"):
        _tiny()(torch.zeros(1, 500))


def test_gradients_reach_every_trained_weight() -> None:
    enc = _tiny(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1).train()
    audio = _noise(1.0, 2).requires_grad_()
    sum(h.pow(2).mean() for h in enc.hidden_states(audio)).backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert not any(b.requires_grad for b in enc.buffers())  # mask token, window, filter bank


def test_bf16_on_cpu_gives_finite_close_outputs() -> None:
    enc = _tiny()
    audio = _noise(2.0, 2)
    with torch.no_grad():
        full = enc(audio)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = enc(audio)
            mel = enc.mel(audio)
    assert mel.dtype == torch.float32  # the front-end stays in float32
    assert half.shape == full.shape and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max()
    with torch.no_grad():  # a model cast to bfloat16 (Lightning's "bf16-true"): the front-end still in float32
        cast = enc.to(torch.bfloat16)(audio)
        assert torch.equal(enc.mel(audio), mel)
    assert cast.dtype == torch.bfloat16 and torch.isfinite(cast).all()
    assert (cast.float() - full).abs().max() < 0.1 * full.abs().max()
