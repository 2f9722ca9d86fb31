"""BEATs against Microsoft's reference outputs (fixtures/README.md), the published checkpoint layouts, frames and
padding, loading errors, fine-tuning and bf16 autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sed.models.encoders.beats import BEATs, load_beats, save_beats

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = ("deepnorm", "prenorm", "relbias")
TINY = dict(
    encoder_layers=1,
    encoder_embed_dim=16,
    embed_dim=16,
    encoder_ffn_embed_dim=32,
    encoder_attention_heads=2,
    conv_pos=4,
    conv_pos_groups=4,
    relative_position_embedding=True,
    gru_rel_pos=True,
    num_buckets=16,
    max_distance=100,
    deep_norm=True,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURES / "beats_reference_outputs.pt", weights_only=True)


def _published(name: str) -> dict:
    return torch.load(FIXTURES / f"beats_{name}.pt", weights_only=True)


def _assert_reference_outputs(model: BEATs, reference: dict, name: str, masked: bool = False) -> None:
    audio, mask = reference["audio"].float(), reference["padding_mask"] if masked else None
    expected = reference[name]
    prefix = "masked_" if masked else ""
    with torch.no_grad():
        tokens = model.token_states(audio, mask)
        frames = model.hidden_states(audio, mask)
        last = model(audio, mask)
    assert len(tokens) == len(frames) == model.n_layers == 2
    torch.testing.assert_close(tokens[-1], expected[prefix + "final"], atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[0], expected[prefix + "intermediate"][0], atol=1e-5, rtol=0)
    # 9 time columns of 8 frequency tokens (148 filterbank frames: the last 4 fill no patch)
    column_means = expected[prefix + "final"].unflatten(1, (9, 8)).mean(2)
    torch.testing.assert_close(frames[-1], column_means, atol=1e-5, rtol=0)
    torch.testing.assert_close(last, frames[-1].transpose(1, 2))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_outputs_equal_the_reference(reference: dict, name: str, masked: bool) -> None:
    model = load_beats(FIXTURES / f"beats_{name}.pt")
    assert not model.training and model.dim == 32 and model.sample_rate == 16000
    _assert_reference_outputs(model, reference, name, masked)
    if masked:  # the padding starts where the reference's and our sample-to-token mappings agree
        tokens_padding = model.frame_padding_mask(reference["padding_mask"]).repeat_interleave(8, -1)
        assert torch.equal(tokens_padding, reference[name]["token_padding"])


def test_todays_weight_norm_naming_loads(reference: dict, tmp_path: Path) -> None:
    published = _published("deepnorm")
    state = published["model"]
    # What today's torch.nn.utils.parametrizations.weight_norm calls magnitude and direction:
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(32, 32, 8, groups=4), dim=2)
    naming = {k: tuple(v.shape) for k, v in conv.state_dict().items()}
    assert naming == {
        "bias": (32,),
        "parametrizations.weight.original0": (1, 1, 8),
        "parametrizations.weight.original1": (32, 8, 8),
    }
    renamed = {
        k.replace("pos_conv.0.weight_g", "pos_conv.0.parametrizations.weight.original0").replace(
            "pos_conv.0.weight_v", "pos_conv.0.parametrizations.weight.original1"
        ): v
        for k, v in state.items()
    }
    assert renamed.keys() != state.keys()
    torch.save({"cfg": published["cfg"], "model": renamed}, tmp_path / "today.pt")
    _assert_reference_outputs(load_beats(tmp_path / "today.pt"), reference, "deepnorm")


def test_finetuned_checkpoint_loads_without_its_classifier(reference: dict, tmp_path: Path) -> None:
    published = _published("relbias")
    cfg = {**published["cfg"], "finetuned_model": True, "predictor_class": 5, "predictor_dropout": 0.0}
    state = {**published["model"], "predictor.weight": torch.randn(5, 32), "predictor.bias": torch.randn(5)}
    torch.save({"cfg": cfg, "model": state}, tmp_path / "finetuned.pt")
    model = load_beats(tmp_path / "finetuned.pt")
    assert not any(k.startswith("predictor") for k in model.state_dict())
    _assert_reference_outputs(model, reference, "relbias")


def test_pretrainedsed_checkpoint_loads(reference: dict, tmp_path: Path) -> None:
    """PretrainedSED saves its prediction wrapper's flat state dict: BEATs under ``model.model.``, heads beside."""
    published = _published("deepnorm")  # a config whose unreadable keys are PretrainedSED's (DeepNorm, 800, gelu)
    state = {"model.model." + k: v for k, v in published["model"].items()}
    state.update(
        {
            "strong_head.weight": torch.randn(7, 32),
            "strong_head.bias": torch.randn(7),
            "weak_head.weight": torch.randn(7, 32),
            "weak_head.bias": torch.randn(7),
        }
    )
    torch.save(state, tmp_path / "BEATs_strong_1.pt")
    model = load_beats(tmp_path / "BEATs_strong_1.pt")
    for key in (
        "encoder_layers",
        "encoder_embed_dim",
        "embed_dim",
        "encoder_ffn_embed_dim",
        "encoder_attention_heads",
        "conv_pos",
        "conv_pos_groups",
        "conv_bias",
        "num_buckets",
        "gru_rel_pos",
        "deep_norm",
    ):
        assert model.config[key] == published["cfg"][key], key
    _assert_reference_outputs(model, reference, "deepnorm")


@pytest.mark.parametrize("name", CONFIGS)
def test_save_writes_the_published_format(reference: dict, name: str, tmp_path: Path) -> None:
    published = _published(name)
    model = load_beats(FIXTURES / f"beats_{name}.pt")
    save_beats(model, tmp_path / "saved.pt")
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    assert saved["model"].keys() == published["model"].keys()  # legacy weight-norm names, table under every layer
    assert all(torch.equal(saved["model"][k], v) for k, v in published["model"].items())
    assert {k: saved["cfg"][k] for k in published["cfg"]} == published["cfg"]
    _assert_reference_outputs(load_beats(tmp_path / "saved.pt"), reference, name)
    assert [p.name for p in tmp_path.iterdir()] == ["saved.pt"]  # no temporary file left


def _write(path: Path, blob) -> Path:
    torch.save(blob, path)
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    published = _published("relbias")
    raw = (FIXTURES / "beats_relbias.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    missing = {k: v for k, v in published["model"].items() if k != "encoder.layers.1.fc2.weight"}
    atst = {"encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "encoder.norm_frame.weight": torch.zeros(3)}
    ast = {"v.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "mlp_head.1.weight": torch.zeros(2, 3)}
    return {
        "missing file": (tmp_path / "absent.pt", "no such file"),
        "truncated": (tmp_path / "truncated.pt", "cannot be read as a torch.save file"),
        "not torch": (tmp_path / "text.pt", "cannot be read as a torch.save file"),
        "no cfg": (_write(tmp_path / "nocfg.pt", published["model"]), "not a BEATs checkpoint"),
        "ATST state dict": (_write(tmp_path / "atst.pt", atst), "not a BEATs checkpoint"),
        "AST state dict": (_write(tmp_path / "ast.pt", {"model": ast}), "not a BEATs checkpoint"),
        "missing key": (
            _write(tmp_path / "missing.pt", {"cfg": published["cfg"], "model": missing}),
            r"missing 1 weight\(s\) \['encoder.layers.1.fc2.weight'\]",
        ),
        "wrong config": (
            _write(
                tmp_path / "deeper.pt", {"cfg": {**published["cfg"], "encoder_layers": 3}, "model": published["model"]}
            ),
            "missing",
        ),
        "unknown config key": (
            _write(tmp_path / "unknown.pt", {"cfg": {**published["cfg"], "colour": 1}, "model": published["model"]}),
            "colour",
        ),
        "python objects": (
            _write(tmp_path / "objects.pt", {"cfg": published["cfg"], "model": nn.Linear(2, 2)}),
            r"holds a Python object \(torch.nn.modules.linear.Linear\)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "truncated",
        "not torch",
        "no cfg",
        "ATST state dict",
        "AST state dict",
        "missing key",
        "wrong config",
        "unknown config key",
        "python objects",
    ],
)
def test_bad_files_name_the_config_key(case: str, tmp_path: Path) -> None:
    path, reason = _bad_files(tmp_path)[case]
    with pytest.raises(ValueError, match=reason) as error:
        load_beats(path)
    message = str(error.value)
    assert message.startswith(f"model.encoder.path={str(path)!r}: ") and "\n" not in message


def test_unknown_or_impossible_config_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown BEATs config key.*'encoder_layer'"):
        BEATs({"encoder_layer": 2})
    with pytest.raises(ValueError, match="deep_norm and layer_norm_first"):
        BEATs({**TINY, "layer_norm_first": True})


def test_frame_hop_matches_the_frames_of_ten_seconds() -> None:
    torch.manual_seed(0)
    model = BEATs(TINY).eval()
    with torch.no_grad():
        frames = model.hidden_states(0.1 * torch.randn(1, 160000))[-1]
    assert model.frame_hop == pytest.approx(0.16)
    assert frames.shape == (1, int(10 / model.frame_hop), 16) == (1, model.num_frames(160000), 16) == (1, 62, 16)


def test_trailing_samples_that_fill_no_patch_change_nothing() -> None:
    torch.manual_seed(0)
    model = BEATs(TINY).eval()
    audio = 0.1 * torch.randn(2, 16000 + 1234)  # 105 filterbank frames: 6 columns, 9 frames left over
    used = 400 + (6 * 16 - 1) * 160  # the last sample of the last full column's last window
    with torch.no_grad():
        full, cut = model.hidden_states(audio)[-1], model.hidden_states(audio[:, :used])[-1]
    assert full.shape == (2, 6, 16) and model.num_frames(used - 1) == 5
    torch.testing.assert_close(full, cut, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least 2800 samples"):
        model.hidden_states(torch.zeros(1, 2799))


def test_padded_batch_gives_each_clip_its_own_frames(reference: dict) -> None:
    model = load_beats(FIXTURES / "beats_deepnorm.pt")
    lengths = [24000, 17777, 9000, 5000]  # none a whole number of patch columns
    audio = torch.zeros(len(lengths), max(lengths))
    mask = torch.ones_like(audio, dtype=torch.bool)
    for i, n in enumerate(lengths):
        audio[i, :n], mask[i, :n] = reference["audio"][i % 2, :n].float(), False
    with torch.no_grad():
        batch = model.hidden_states(audio, mask)
        frame_padding = model.frame_padding_mask(mask)
        for i, n in enumerate(lengths):
            alone = model.hidden_states(audio[i : i + 1, :n])
            valid = model.num_frames(n)
            assert frame_padding[i].tolist() == [False] * valid + [True] * (model.num_frames(max(lengths)) - valid)
            for b, a in zip(batch, alone):
                torch.testing.assert_close(b[i, :valid], a[0], atol=1e-5, rtol=0)


def test_gradients_reach_every_weight_with_the_layer_decay() -> None:
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(2, 8000)
    grads = {}
    for ratio in (1.0, 0.6):
        torch.manual_seed(1)
        model = BEATs({**TINY, "encoder_layers": 2, "layer_wise_gradient_decay_ratio": ratio, "dropout": 0.1}).train()
        torch.manual_seed(2)  # the same dropout masks for both ratios
        model.hidden_states(audio)[-1].square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        grads[ratio] = model.patch_embedding.weight.grad
    # Every path from the last layer back to the patches crosses both layers' decay
    torch.testing.assert_close(grads[0.6], grads[1.0] * 0.6**2, rtol=1e-4, atol=1e-9)


def test_bf16_autocast_on_cpu(reference: dict) -> None:
    model = load_beats(FIXTURES / "beats_deepnorm.pt")
    audio = reference["audio"].float()
    with torch.no_grad():
        exact = model.hidden_states(audio, reference["padding_mask"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.hidden_states(audio, reference["padding_mask"])
    for e, lo in zip(exact, low):
        assert torch.isfinite(lo).all()
        assert (lo.float() - e).abs().max() < 0.1 * e.abs().max()
