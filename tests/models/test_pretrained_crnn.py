"""CRNN with a pretrained AST encoder: input features against transformers' extractor, shapes, freezing, the
embedding cache, loading from a local folder, configuration errors, and a train.py run then sed.infer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from sed.features.frontend import FrontEnd
from sed.models.encoders import audio_fingerprint, model_inputs
from sed.models.encoders.ast import ASTEncoder
from sed.models.pretrained_crnn import PretrainedCRNN

# A tiny AST: 2 layers, 2 heads, hidden 32, 2.56 s of input (256 filterbank frames).
TINY_AST = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_length=256)
CRNN_KEYS = dict(filters=[8, 16, 16], pooling=[[2, 2], [2, 4], [1, 4]], rnn_hidden=16, rnn_layers=1)
N_MELS = 32


def _model(**encoder) -> PretrainedCRNN:
    torch.manual_seed(0)
    return PretrainedCRNN(
        n_classes=3, n_features=N_MELS, encoder={"config": TINY_AST, **encoder}, embedding_dim=8, **CRNN_KEYS
    )


def _audio(n: int = 3, seconds: float = 2.0) -> torch.Tensor:
    torch.manual_seed(1)
    return 0.1 * torch.randn(n, int(seconds * 16000))


def _frontend() -> FrontEnd:
    return FrontEnd(n_fft=512, win_length=512, n_mels=N_MELS)


def test_input_features_are_those_of_the_ast_feature_extractor() -> None:
    from transformers import ASTFeatureExtractor

    enc = _model().audio_encoder
    audio = _audio(2)
    ours, n = enc.fbank(audio)
    ref = ASTFeatureExtractor(max_length=256)([a.numpy() for a in audio], sampling_rate=16000, return_tensors="pt")
    assert n == 1 + (32000 - 400) // 160
    torch.testing.assert_close(ours, ref["input_values"], atol=1e-4, rtol=1e-4)


def test_shapes_embeddings_pooled_to_the_crnn_frames() -> None:
    model = _model().eval()
    audio = _audio()
    emb = model_inputs(model, audio)["embeddings"]
    # 198 filterbank frames: columns every 10 frames that start on audio -> 20 frames of 32 dims.
    assert emb.shape == (3, 32, 20)
    with torch.no_grad():
        out = model(_frontend()(audio), **model_inputs(model, audio))
    assert out.strong.shape == (3, 3, (1 + 32000 // 256) // 4) and out.weak.shape == (3, 3)
    # The audio instead of the embeddings: the model runs its encoder, same output.
    with torch.no_grad():
        again = model(_frontend()(audio), audio=audio)
    torch.testing.assert_close(again.strong, out.strong)


def test_frozen_encoder_gets_no_gradient_and_keeps_its_weights() -> None:
    model = _model().train()
    before = {k: v.clone() for k, v in model.audio_encoder.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    audio = _audio()
    out = model(_frontend()(audio), **model_inputs(model, audio))
    out.strong.mean().backward()
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    assert model.embedding_projection[0].weight.grad is not None and model.rnn.weight_ih_l0.grad is not None
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.audio_encoder.state_dict().items())
    assert not model.audio_encoder.model.training  # a frozen encoder stays in evaluation mode


def test_finetuning_starts_at_the_configured_epoch() -> None:
    model = _model(finetune_after_epoch=1).train()
    enc = model.audio_encoder
    audio = _audio()
    enc.embed(audio, cache=True)
    assert enc.cache_size == 3
    enc.set_epoch(0)
    assert enc.frozen
    enc.set_epoch(1)
    assert not enc.frozen and enc.cache_size == 0
    out = model(_frontend()(audio), **model_inputs(model, audio, cache=True))
    out.strong.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert enc.cache_size == 0


def test_cached_embeddings_equal_fresh_ones_and_are_keyed_by_content() -> None:
    enc = _model().audio_encoder
    audio = _audio(4)
    first = enc.embed(audio, cache=True)
    assert enc.cache_size == 4
    fresh = enc(audio)
    torch.testing.assert_close(first, fresh, atol=1e-6, rtol=1e-6)
    # Rows in another order and batch: served from the cache, each the embedding of its own audio.
    calls = []
    handle = enc.model.register_forward_hook(lambda *a: calls.append(1))
    again = enc.embed(audio[[2, 0]], cache=True)
    assert not calls
    torch.testing.assert_close(again, fresh[[2, 0]], atol=1e-6, rtol=1e-6)
    # Other audio (one changed sample) is another key, computed fresh.
    changed = audio[:1].clone()
    changed[0, 100] += 1e-3
    assert audio_fingerprint(changed) != audio_fingerprint(audio[:1])
    enc.embed(changed, cache=True)
    handle.remove()
    assert calls and enc.cache_size == 5
    # Without cache=True (inference), nothing is stored.
    enc.embed(_audio(2, seconds=1.0))
    assert enc.cache_size == 5


def test_cache_limit_stops_growth() -> None:
    enc = _model(cache_max_gb=32 * 20 * 4 * 2 / 2**30).audio_encoder  # room for two clips' embeddings
    out = enc.embed(_audio(3), cache=True)
    assert enc.cache_size == 2 and out.shape[0] == 3


def test_load_from_a_local_folder_round_trips(tmp_path) -> None:
    model = _model()
    model.audio_encoder.model.save_pretrained(tmp_path / "ast")
    (tmp_path / "ast" / "preprocessor_config.json").write_text(json.dumps({"mean": -3.0, "std": 2.0}))
    loaded = ASTEncoder(path=str(tmp_path / "ast"))
    assert loaded.frozen and (loaded.mean, loaded.std) == (-3.0, 2.0)
    for (k, v), (k2, v2) in zip(model.audio_encoder.model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    audio = _audio(2)
    feats, _ = loaded.fbank(audio)
    ref, _ = model.audio_encoder.fbank(audio)
    torch.testing.assert_close(feats * 4.0 - 3.0, ref * 2 * 4.5689974 - 4.2677393, atol=1e-4, rtol=1e-4)


def test_missing_folder_or_config_json_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model.encoder.path=.*no such directory.*huggingface-cli download"):
        ASTEncoder(path=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model.encoder.path=.*no config.json"):
        ASTEncoder(path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="needs a path"):
        ASTEncoder()
    with pytest.raises(ValueError, match="longer max_length"):
        _model().audio_encoder(_audio(1, seconds=3.0))  # 3 s > the tiny AST's 2.56 s


def test_mean_teacher_shares_the_frozen_encoder() -> None:
    from conftest import tiny_module

    encoder = {
        "_target_": "sed.models.pretrained_crnn.PretrainedCRNN",
        "encoder": {"config": TINY_AST},
        "embedding_dim": 8,
        "filters": [4, 8],
        "pooling": [[2, 4], [2, 4]],
        "rnn_hidden": 8,
        "rnn_layers": 1,
    }
    module = tiny_module(["a", "b"], model=encoder)
    assert module.teacher.audio_encoder is module.student.audio_encoder
    assert module.teacher.rnn is not module.student.rnn
    from sed.training.ema import update_teacher

    enc = {k: v.clone() for k, v in module.student.audio_encoder.state_dict().items()}
    with torch.no_grad():
        for p in module.student.rnn.parameters():
            p.add_(1.0)
    update_teacher(module.teacher, module.student, 0.5)
    assert all(torch.equal(enc[k], v) for k, v in module.student.audio_encoder.state_dict().items())


def test_train_then_infer_end_to_end(tiny_dataset, tmp_path) -> None:
    from conftest import run_train, tiny_overrides

    from sed.inference.detector import Detector

    config = "{" + ",".join(f"{k}:{v}" for k, v in TINY_AST.items()) + "}"
    args = tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=2) + [
        "model=crnn_ast",
        "model.encoder.path=null",
        f"model.encoder.config={config}",
        "model.embedding_dim=8",
        "test=false",
    ]
    proc = run_train(args)
    ckpt = next((tmp_path / "exp").rglob("last.ckpt"))
    assert "Traceback" not in proc.stderr
    detector = Detector.from_checkpoint(ckpt, device="cpu")
    assert detector.network.audio_encoder.frozen
    wav = np.asarray(_audio(1, seconds=3.5)[0])  # longer than a 2-s training clip: two windows
    prediction = detector.predict(wav, 16000)
    assert prediction.probabilities.shape[0] == len(detector.classes)
    assert np.isfinite(prediction.probabilities).all()
    assert detector.network.audio_encoder.cache_size == 0  # inference does not cache
    from sed.export import export_detector

    result = export_detector(ckpt, tmp_path / "crnn_ast.onnx")  # the batched filterbank keeps a dynamic batch
    assert result.max_abs_diff < 1e-4


def test_configurations_and_checkpoints_from_before_the_encoder_interface_still_load() -> None:
    """model=crnn_ast runs saved a model.encoder of AST keys without _target_ and the encoder's weights under
    audio_encoder.model.*: the schema accepts such a node, it builds AST, and the state-dict keys are unchanged."""
    from omegaconf import OmegaConf

    from sed.run.config import Config, check_known_keys

    old = {
        "path": None,
        "config": TINY_AST,
        "frozen": True,
        "finetune_after_epoch": None,
        "sample_rate": 16000,
        "cache": True,
        "cache_max_gb": 4.0,
    }
    node = {"_target_": "sed.models.pretrained_crnn.PretrainedCRNN", "embedding_dim": 8, "encoder": old, **CRNN_KEYS}
    cfg = OmegaConf.structured(Config)
    OmegaConf.update(cfg, "model", node, merge=False)
    check_known_keys(cfg)
    torch.manual_seed(0)
    model = PretrainedCRNN(n_classes=3, n_features=N_MELS, **{k: v for k, v in node.items() if k != "_target_"})
    assert isinstance(model.audio_encoder, ASTEncoder)
    keys = [k for k in model.state_dict() if k.startswith("audio_encoder.")]
    assert keys and all(k.startswith("audio_encoder.model.") for k in keys)
    from sed.models.encoders import build_encoder

    assert isinstance(build_encoder({"_target_": "sed.models.embeddings.ASTEncoder", "config": TINY_AST}), ASTEncoder)
    with pytest.raises(Exception, match=r"model.encoder.no_such_key"):
        OmegaConf.update(cfg, "model.encoder.no_such_key", 1, merge=False)
        check_known_keys(cfg)
