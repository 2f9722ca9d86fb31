"""BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", arXiv 2212.09058): our
implementation, numerically equal to Microsoft's (``microsoft/unilm``, folder ``beats``), and the loading of
its published checkpoints.

Input: 16-kHz audio ``[B, N]``, scaled by 2**15 (16-bit integer range), Kaldi's 128-bin log-mel filterbank
(25-ms windows every 10 ms, :mod:`.kaldi_fbank`), normalised with the fixed statistics the released models were
trained with. The filterbank ``[T, 128]`` is cut into 16x16 patches (16 frames x 16 mel bins), each embedded by
a strided convolution, layer-normed, projected to the encoder width when it differs; the transformer
(:mod:`.beats_layers`) sees the ``T' * F'`` patch tokens in time-major order (token ``t * F' + f``,
``T' = T // 16``, ``F' = 8``; trailing frames that do not fill a patch are dropped).

Frames: :meth:`BEATs.hidden_states` averages the ``F'`` tokens of each time column, one frame every
``frame_hop = 16 * 10 ms = 0.16 s`` (frame ``t`` sees samples ``[2560 t, 2560 t + 2800)``; 62 frames for
10 s). The DCASE 2024 Task 4 baseline does not average over frequency: it stores the ``T' * F'`` tokens of the
last layer as they are (``[B, 768, 496]`` for 10 s) and its CRNN pools that flattened sequence with
``adaptive_avg_pool1d`` to its own 156 frames, so each of its frames averages 3 or 4 consecutive tokens, a part
of the frequency bands of one time column (sometimes straddling two). :meth:`BEATs.token_states` gives those
tokens for whoever wants to reproduce that.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from sed.models.encoders.beats_layers import Encoder
from sed.models.encoders.kaldi_fbank import fbank_frames, kaldi_fbank

#: BEATs' configuration keys with the defaults of Microsoft's ``BEATsConfig`` (``input_patch_size``: 16, the
#: value of every released model, instead of its placeholder -1).
DEFAULT_CONFIG: dict = {
    "input_patch_size": 16,
    "embed_dim": 512,
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 1.0,
    "layer_norm_first": False,
    "deep_norm": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
    "finetuned_model": False,
    "predictor_dropout": 0.1,
    "predictor_class": 527,
}
#: What PretrainedSED's BEATs wrapper builds (its ``BEATsConfig`` defaults, those of BEATs iter3): its checkpoints
#: hold no config, and these keys cannot be read from the weights' shapes.
PRETRAINEDSED_CONFIG: dict = {
    **DEFAULT_CONFIG,
    "deep_norm": True,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.1,
    "relative_position_embedding": True,
    "max_distance": 800,
    "gru_rel_pos": True,
}
SAMPLE_RATE = 16000
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582  # the released models' input statistics
_N_MELS, _WINDOW, _SHIFT = 128, 400, 160  # 25-ms windows every 10 ms at 16 kHz
_CONFIG_KEY = "model.encoder.path"
_PRETRAINEDSED_PREFIX = "model.model."
_PRETRAINEDSED_HEADS = ("strong_head.", "weak_head.", "seq_model.")
_LEGACY_POS_CONV = {
    "weight_g": "encoder.pos_conv.0.weight_g",
    "weight_v": "encoder.pos_conv.0.weight_v",
    "bias": "encoder.pos_conv.0.bias",
}
_PARAMETRIZED_POS_CONV = {
    "encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.weight_v",
}
_SHARED_TABLE = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight")


def beats_config(config: dict) -> dict:
    """The full configuration: ``config`` over :data:`DEFAULT_CONFIG`. Raises ``ValueError`` naming unknown keys
    or impossible combinations."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown BEATs config key(s) {unknown}; known: {sorted(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **config}
    if cfg["deep_norm"] and cfg["layer_norm_first"]:
        raise ValueError("BEATs config: deep_norm and layer_norm_first cannot both be true")
    if cfg["input_patch_size"] < 1 or _N_MELS % cfg["input_patch_size"]:
        raise ValueError(f"BEATs config: input_patch_size={cfg['input_patch_size']} must divide {_N_MELS} mel bins")
    if cfg["activation_fn"] == "glu":
        raise ValueError("BEATs config: activation_fn='glu' is not supported")
    return cfg


class BEATs(nn.Module):
    """The BEATs encoder from audio to frame embeddings; ``BEATs(config)`` with BEATsConfig keys (see
    :data:`DEFAULT_CONFIG`). A fine-tuned model's AudioSet classifier (``finetuned_model``) is not built.

    Attributes: ``dim`` (embedding width), ``n_layers``, ``sample_rate`` (16000), ``frame_hop`` (seconds between
    output frames: 0.16 for 16x16 patches), ``config`` (the full configuration dict).
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = cfg = beats_config(config)
        self.dim, self.n_layers = cfg["encoder_embed_dim"], cfg["encoder_layers"]
        self.patch = cfg["input_patch_size"]
        self.frame_hop = self.patch * _SHIFT / SAMPLE_RATE
        self.patch_embedding = nn.Conv2d(1, cfg["embed_dim"], self.patch, self.patch, bias=cfg["conv_bias"])
        self.layer_norm = nn.LayerNorm(cfg["embed_dim"])
        self.post_extract_proj = nn.Linear(cfg["embed_dim"], self.dim) if cfg["embed_dim"] != self.dim else None
        self.dropout_input = nn.Dropout(cfg["dropout_input"])
        self.encoder = Encoder(cfg)

    def num_frames(self, num_samples: int) -> int:
        """Frames (time columns) the model gives for ``num_samples`` samples."""
        return fbank_frames(num_samples, SAMPLE_RATE) // self.patch

    def frame_padding_mask(self, padding_mask: Tensor) -> Tensor:
        """``[B, T']`` True for output frames that see any padded sample of ``padding_mask [B, N]`` (True where
        the audio is padding). A clip padded at its end thus keeps exactly the frames it has alone."""
        frames = padding_mask.unfold(-1, _WINDOW, _SHIFT).any(-1)
        n = frames.shape[-1] // self.patch
        return frames[:, : n * self.patch].unflatten(-1, (n, self.patch)).any(-1)

    def filterbank(self, audio: Tensor) -> Tensor:
        """The normalised log-mel filterbank ``[B, T, 128]`` the patches are cut from, in float32 (no autocast)."""
        with torch.autocast(audio.device.type, enabled=False):
            fbank = kaldi_fbank(audio.float() * 2**15, SAMPLE_RATE, _N_MELS)
        return (fbank - FBANK_MEAN) / (2 * FBANK_STD)

    def token_states(self, audio: Tensor, padding_mask: Tensor | None = None) -> list[Tensor]:
        """Each layer's patch tokens ``[B, T' * F', D]`` in time-major order (token ``t * F' + f``), for
        ``audio [B, N]`` at 16 kHz; the last is Microsoft's ``extract_features(audio)[0]``.

        ``padding_mask [B, N]`` (True where padding): tokens of time columns that see padded audio are zeroed
        before the positional convolution and not attended to. This is the reference's masking with a column-exact
        mapping from samples to tokens (the reference maps samples to tokens proportionally, which masks part of a
        boundary column's frequency tokens); where both mappings agree the outputs are equal.
        """
        if audio.dim() != 2:
            raise ValueError(f"BEATs expects audio [batch, samples], got shape {tuple(audio.shape)}")
        if self.num_frames(audio.shape[-1]) < 1:
            minimum = _WINDOW + (self.patch - 1) * _SHIFT
            raise ValueError(
                f"BEATs needs at least {minimum} samples ({minimum / SAMPLE_RATE:g} s at 16 kHz) for "
                f"one {self.patch}-frame patch, got {audio.shape[-1]}"
            )
        fbank = self.filterbank(audio)
        x = self.patch_embedding(fbank[:, None].to(self.patch_embedding.weight.dtype))  # [B, E, T', F']
        n_freq = x.shape[-1]
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.dropout_input(x)
        tokens_padding = None
        if padding_mask is not None:
            if padding_mask.shape != audio.shape:
                raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} != audio shape {tuple(audio.shape)}")
            tokens_padding = self.frame_padding_mask(padding_mask.bool()).repeat_interleave(n_freq, -1)
        return self.encoder(x, tokens_padding)

    def hidden_states(self, audio: Tensor, padding_mask: Tensor | None = None) -> list[Tensor]:
        """Each layer's frame embeddings ``[B, T', D]`` (``n_layers`` of them): :meth:`token_states` averaged
        over the frequency tokens of each time column; one frame every ``frame_hop`` seconds. Frames marked by
        :meth:`frame_padding_mask` are not meaningful."""
        states = self.token_states(audio, padding_mask)
        n_time = self.num_frames(audio.shape[-1])
        return [s.unflatten(1, (n_time, -1)).mean(2) for s in states]

    def forward(self, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The last layer's frame embeddings ``[B, D, T']``."""
        return self.hidden_states(audio, padding_mask)[-1].transpose(1, 2)


class BEATsCheckpointError(ValueError):
    """A file that is not a loadable BEATs checkpoint; the message names ``model.encoder.path``."""


def load_beats(path: str | os.PathLike) -> BEATs:
    """A :class:`BEATs` in eval mode with the weights of ``path``, read on the CPU with
    ``torch.load(weights_only=True)`` (the published files hold only tensors and plain containers).

    Formats: Microsoft's release (a dict with ``cfg``, the BEATsConfig dict, and ``model``, the state dict;
    a fine-tuned model's ``predictor`` classifier is ignored) and PretrainedSED's checkpoints (the flat state dict
    of its prediction wrapper: ``model.model.*`` BEATs weights, ``strong_head``/``weak_head``/``seq_model``
    ignored; the config is read from the weights' shapes, the rest is PretrainedSED's :data:`PRETRAINEDSED_CONFIG`).
    The positional convolution's weight norm may be named either way torch has named it. Raises
    :class:`BEATsCheckpointError` naming ``model.encoder.path`` when the file is missing, unreadable, of another
    model family, or lacks weights.
    """
    path = Path(path)
    where = f"{_CONFIG_KEY}={str(path)!r}"
    if not path.is_file():
        raise BEATsCheckpointError(f"{where}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise BEATsCheckpointError(
                f"{where}: not a BEATs checkpoint: it holds a Python object "
                f"({found.group(1)}), not only tensors and plain containers as published "
                f"checkpoints do; it is not unpickled (arbitrary code)"
            ) from None
        detail = re.search(r"WeightsUnpickler error: (.+)", str(error))
        raise BEATsCheckpointError(
            f"{where}: cannot be read as a torch.save file (truncated or not a "
            f"checkpoint): unpickling failed {detail.group(1) if detail else ''}".rstrip()
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise BEATsCheckpointError(
            f"{where}: cannot be read as a torch.save file (truncated or not a checkpoint): {_first_line(error)}"
        ) from None
    cfg, state = _split_checkpoint(blob, where)
    try:
        model = BEATs(cfg)
    except ValueError as error:
        raise BEATsCheckpointError(f"{where}: {error}") from None
    _load_state(model, state, where)
    return model.eval()


def save_beats(model: BEATs, path: str | os.PathLike) -> None:
    """Write ``model`` in Microsoft's published format (``{"cfg", "model"}``, weight norm named ``weight_g`` /
    ``weight_v``, the shared relative position table under every layer), atomically."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.pos_conv."):
            key = _LEGACY_POS_CONV[key.removeprefix("encoder.pos_conv.")]
        state[key] = value
        if key == "encoder.layers.0.self_attn.relative_attention_bias.weight":
            for i in range(1, model.n_layers):
                state[f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"] = value
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"cfg": dict(model.config), "model": state}, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _split_checkpoint(blob: object, where: str) -> tuple[dict, dict]:
    """``(config, state dict)`` of a published BEATs file or a PretrainedSED checkpoint."""
    if isinstance(blob, dict) and "cfg" in blob and "model" in blob:
        cfg, state = blob["cfg"], blob["model"]
        if not isinstance(cfg, dict) or not isinstance(state, dict):
            raise BEATsCheckpointError(
                f"{where}: 'cfg' and 'model' must be dicts, got {type(cfg).__name__} and {type(state).__name__}"
            )
        return dict(cfg), dict(state)
    if isinstance(blob, dict) and any(isinstance(k, str) and k.startswith(_PRETRAINEDSED_PREFIX) for k in blob):
        state = {
            k.removeprefix(_PRETRAINEDSED_PREFIX): v for k, v in blob.items() if k.startswith(_PRETRAINEDSED_PREFIX)
        }
        others = [k for k in blob if not k.startswith((_PRETRAINEDSED_PREFIX, *_PRETRAINEDSED_HEADS))]
        if others:
            raise BEATsCheckpointError(f"{where}: PretrainedSED checkpoint with unexpected keys {others[:5]}")
        return _config_from_shapes(state, where), state
    found = sorted(map(str, blob))[:6] if isinstance(blob, dict) else type(blob).__name__
    raise BEATsCheckpointError(
        f"{where}: not a BEATs checkpoint: expected Microsoft's format (a dict with 'cfg' and 'model') or a "
        f"PretrainedSED BEATs state dict ('model.model.*' keys); found {found}"
    )


def _config_from_shapes(state: dict, where: str) -> dict:
    """A PretrainedSED model's config: sizes from the weights, the rest from :data:`PRETRAINEDSED_CONFIG`."""
    state = _rename_pos_conv(state)
    try:
        layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        patch = state["patch_embedding.weight"]
        direction = state["encoder.pos_conv.weight_v"]
        dim = state["encoder.layer_norm.weight"].shape[0]
        cfg = {
            **PRETRAINEDSED_CONFIG,
            "encoder_layers": len(layers),
            "encoder_embed_dim": dim,
            "embed_dim": patch.shape[0],
            "input_patch_size": patch.shape[-1],
            "conv_bias": "patch_embedding.bias" in state,
            "encoder_ffn_embed_dim": state["encoder.layers.0.fc1.weight"].shape[0],
            "conv_pos": direction.shape[-1],
            "conv_pos_groups": dim // direction.shape[1],
        }
    except KeyError as missing:
        raise BEATsCheckpointError(f"{where}: PretrainedSED checkpoint without BEATs weight {missing}") from None
    table = state.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    cfg["relative_position_embedding"] = table is not None
    if table is not None:
        cfg["num_buckets"], cfg["encoder_attention_heads"] = table.shape
    cfg["gru_rel_pos"] = "encoder.layers.0.self_attn.grep_a" in state
    return cfg


def _rename_pos_conv(state: dict) -> dict:
    """Both namings of the weight-normed positional convolution onto ours."""
    renamed = {}
    for key, value in state.items():
        if key in _PARAMETRIZED_POS_CONV:
            key = _PARAMETRIZED_POS_CONV[key]
        elif key.startswith("encoder.pos_conv.0."):
            key = "encoder.pos_conv." + key.removeprefix("encoder.pos_conv.0.")
        renamed[key] = value
    return renamed


def _load_state(model: BEATs, state: dict, where: str) -> None:
    """Load ``state`` into ``model`` strictly, after dropping what is deliberately not used: the classifier
    and the other layers' references to the shared relative position table."""
    state = _rename_pos_conv(state)
    ignored = {
        k
        for k in state
        if k.startswith("predictor.") or ((m := _SHARED_TABLE.fullmatch(k)) is not None and m.group(1) != "0")
    }
    state = {k: v for k, v in state.items() if k not in ignored}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} weight(s) {missing[:4]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} weight(s) {unexpected[:4]}")
        raise BEATsCheckpointError(f"{where}: weights do not match its BEATs config: {'; '.join(detail)}")
    for key, value in state.items():
        if not isinstance(value, Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise BEATsCheckpointError(
                f"{where}: weight {key} has shape {shape}, its BEATs config needs {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)
