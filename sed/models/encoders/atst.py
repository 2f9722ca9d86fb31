"""ATST-Frame (Li, Shao, Li: "Self-supervised audio teacher-student transformer for both clip-level and
frame-level tasks", IEEE/ACM TASLP 2024), the encoder of ATST-SED and of the DCASE 2024 task 4 winning systems:
raw 16-kHz audio in, one embedding every 40 ms out. This is the project's own implementation; for the lengths the
published model supports it computes the same numbers as the published code (``Audio-WestlakeU/audiossl``
``FrameAST``, as ATST-SED and PretrainedSED call it), and it loads the published checkpoints.

The model: the log-mel front-end of :mod:`sed.models.encoders.atst_layers`; patches spanning all mel bins over
``patch_w`` frames (64 x 4: one token per 40 ms), flattened mel-major and projected linearly; learned absolute
positions, the first ``T`` of them for ``T`` tokens (the reference's ``pos_type="cut"``; its slot 0, a class-token
slot, is kept but unused, as in the reference); ``depth`` pre-norm transformer layers; a final LayerNorm.

Features for SED (ATST-SED, PretrainedSED) are the final LayerNorm applied to the last layer's output
(``get_intermediate_layers(x, length, n=1, scene=False)``): :meth:`ATSTFrame.forward`. :meth:`ATSTFrame.hidden_states`
gives every layer's output through that same final LayerNorm, as ``get_intermediate_layers(n=depth)`` does.

Length: the positions cover ``spec_w // patch_w`` tokens (250 = 10 s for the published model; the reference fails
beyond that). Longer audio is handled as ``audiossl``'s embedding API does, with one correction: the log-mel of the
whole clip is cut into consecutive pieces of ``250 * patch_w`` = 1000 frames (exactly 10 s), each encoded on its
own (positions from 0, attention within the piece), the last, shorter piece at its own length, and the tokens are
concatenated. ``audiossl`` cuts pieces of 1001 frames, whose last frame its patching drops, so its frames drift by
10 ms per 10 s from the 40-ms grid it reports; here frame ``i`` always starts at ``i * 40`` ms. For ``N`` samples
there are ``(N // 160 + 1) // patch_w`` frames, whatever the length.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sed.models.encoders.atst_layers import HOP, SAMPLE_RATE, ATSTLayer, ATSTMelFrontEnd

#: The published base model (``FrameAST_base`` with ATST-SED's 64 x 4 patches and 10-s positions), no dropout.
DEFAULTS: dict[str, Any] = dict(
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=False,
    n_mels=64,
    patch_h=64,
    patch_w=4,
    spec_w=1001,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
)
DROPOUT_KEYS = ("drop_rate", "attn_drop_rate", "drop_path_rate")
_CONFIG_KEY = "model.encoder.config"
_PATH_KEY = "model.encoder.path"

# Our parameter names <-> the reference's (FrameAST), top level and inside a layer.
_TOP_NAMES = {
    "positions": "pos_embed",
    "mask_token": "mask_embed",
    "patch_proj.weight": "patch_embed.patch_embed.weight",
    "patch_proj.bias": "patch_embed.patch_embed.bias",
    "out_norm.weight": "norm_frame.weight",
    "out_norm.bias": "norm_frame.bias",
}
_LAYER_NAMES = {
    "attn_norm": "norm1",
    "qkv": "attn.qkv",
    "out": "attn.proj",
    "ffn_norm": "norm2",
    "ffn_in": "mlp.fc1",
    "ffn_out": "mlp.fc2",
}


class ATSTFrame(nn.Module):
    """ATST-Frame: audio ``[B, N]`` at 16 kHz -> frame embeddings, one per ``frame_hop`` = 40 ms.

    Args:
        config: keys named after the reference's constructor arguments, any subset of :data:`DEFAULTS` (the
            published base model): ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``;
            ``n_mels`` (the front-end's mel bins, the reference's ``spec_h``), ``patch_h`` (must equal
            ``n_mels``: a frame model's patches span all bins), ``patch_w`` (frames per token), ``spec_w`` (the
            trained spectrogram length in frames: ``spec_w // patch_w`` positions); ``drop_rate``,
            ``attn_drop_rate``, ``drop_path_rate`` (the latter rising linearly over the layers from 0).
            Weights are random (the reference's initialisation); :func:`load_atst_frame` loads published ones.

    Attributes: ``dim`` (embedding size), ``n_layers``, ``sample_rate`` (16000), ``frame_hop`` (seconds between
    output frames), ``max_frames`` (frames encoded at once: longer audio is encoded in pieces of that many).
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = _checked_config(config or {})
        self.config = cfg
        self.dim, self.n_layers = cfg["embed_dim"], cfg["depth"]
        self.patch_w = cfg["patch_w"]
        self.max_frames = cfg["spec_w"] // self.patch_w
        self.frame_hop = self.patch_w * HOP / SAMPLE_RATE
        self.frontend = ATSTMelFrontEnd(cfg["n_mels"])
        self.patch_proj = nn.Linear(cfg["n_mels"] * self.patch_w, self.dim)
        self.positions = nn.Parameter(torch.zeros(1, self.max_frames + 1, self.dim))
        # The reference's mask token (pretraining only): kept so checkpoints round-trip, never trained.
        self.register_buffer("mask_token", torch.zeros(1, 1, self.dim))
        self.pos_drop = nn.Dropout(cfg["drop_rate"])
        rates = torch.linspace(0, cfg["drop_path_rate"], self.n_layers).tolist()
        self.layers = nn.ModuleList(
            ATSTLayer(
                self.dim,
                cfg["num_heads"],
                cfg["mlp_ratio"],
                cfg["qkv_bias"],
                cfg["drop_rate"],
                cfg["attn_drop_rate"],
                rate,
            )
            for rate in rates
        )
        self.out_norm = nn.LayerNorm(self.dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.positions, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-2.0, b=2.0)

    # ------------------------------------------------------------------ encoding
    def mel(self, audio: Tensor) -> Tensor:
        """The model's input: normalised log-mel ``[B, n_mels, N // 160 + 1]`` of ``audio [B, N]``."""
        return self.frontend(audio)

    def hidden_states(self, audio: Tensor) -> list[Tensor]:
        """Every layer's output ``[B, T_e, dim]`` through the final LayerNorm (the reference's
        ``get_intermediate_layers(n=depth, scene=False)``, split per layer); ``n_layers`` tensors."""
        return self._encode(audio, every_layer=True)

    def forward(self, audio: Tensor) -> Tensor:
        """The frame features ATST-SED uses ``[B, dim, T_e]``: the last layer through the final LayerNorm."""
        return self._encode(audio, every_layer=False)[-1].transpose(1, 2)

    def n_frames(self, n_samples: int) -> int:
        """The number of output frames for ``n_samples`` samples of audio."""
        return (n_samples // HOP + 1) // self.patch_w

    def _encode(self, audio: Tensor, every_layer: bool) -> list[Tensor]:
        mel = self.mel(audio)
        batch, span = mel.shape[0], self.max_frames * self.patch_w
        n_pieces = mel.shape[-1] // span
        if mel.shape[-1] // self.patch_w <= self.max_frames:
            return self._run(mel, every_layer)
        # Whole pieces of `span` mel frames, encoded as one batch, then the shorter remainder.
        pieces = mel[..., : n_pieces * span].unflatten(-1, (n_pieces, span)).transpose(1, 2).flatten(0, 1)
        outs = [h.reshape(batch, n_pieces * self.max_frames, self.dim) for h in self._run(pieces, every_layer)]
        rest = mel[..., n_pieces * span :]
        if rest.shape[-1] >= self.patch_w:
            outs = [torch.cat(pair, 1) for pair in zip(outs, self._run(rest, every_layer))]
        return outs

    def _run(self, mel: Tensor, every_layer: bool) -> list[Tensor]:
        """Encode mel ``[B, n_mels, M]`` of at most ``max_frames`` tokens; trailing frames short of a patch
        are dropped, as the reference does."""
        b, n_mels, m = mel.shape
        t = m // self.patch_w
        patches = mel[..., : t * self.patch_w].reshape(b, n_mels, t, self.patch_w).transpose(1, 2).flatten(2)
        x = self.pos_drop(self.patch_proj(patches.to(self.patch_proj.weight.dtype)) + self.positions[:, 1 : t + 1])
        outs = []
        for layer in self.layers:
            x = layer(x)
            if every_layer:
                outs.append(self.out_norm(x))
        return outs if every_layer else [self.out_norm(x)]

    # ------------------------------------------------------------------ the reference's parameter names
    def reference_state_dict(self) -> dict[str, Tensor]:
        """The weights under the reference ``FrameAST``'s names (what its ``load_state_dict`` takes)."""
        return {_to_reference(k): v for k, v in self.state_dict().items()}

    def load_reference_state_dict(self, weights: Mapping[str, Tensor]) -> None:
        """Load weights named as in the reference ``FrameAST``; every weight must be there, nothing else.
        Raises ``KeyError`` naming missing or unexpected keys, ``RuntimeError`` on a shape mismatch."""
        ours = {_from_reference(k): v for k, v in weights.items()}
        expected = set(self.state_dict())
        missing = sorted(_to_reference(k) for k in expected - set(ours))
        unexpected = sorted(k for k in weights if _from_reference(k) not in expected)
        if missing or unexpected:
            raise KeyError(
                ", ".join(
                    f"{what} keys {_few(keys)}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected))
                    if keys
                )
            )
        self.load_state_dict(ours)


def _to_reference(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    i, module, param = name.split(".", 1)[1].split(".")  # layers.<i>.<module>.<param>
    return f"blocks.{i}.{_LAYER_NAMES[module]}.{param}"


_FROM_TOP = {v: k for k, v in _TOP_NAMES.items()}
_FROM_LAYER = {v: k for k, v in _LAYER_NAMES.items()}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def _from_reference(name: str) -> str:
    """Our name for a reference key; an unknown key maps to itself (then reported as unexpected)."""
    if name in _FROM_TOP:
        return _FROM_TOP[name]
    match = _BLOCK.fullmatch(name)
    if match and match[2] in _FROM_LAYER:
        return f"layers.{match[1]}.{_FROM_LAYER[match[2]]}.{match[3]}"
    return name


def _few(keys: list[str], n: int = 6) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"


def _checked_config(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{_CONFIG_KEY}: unknown ATST-Frame key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    for key in ("embed_dim", "depth", "num_heads", "n_mels", "patch_h", "patch_w", "spec_w"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{_CONFIG_KEY}.{key}: a positive integer, got {cfg[key]!r}")
    for key in DROPOUT_KEYS:
        if not 0.0 <= float(cfg[key]) < 1.0:
            raise ValueError(f"{_CONFIG_KEY}.{key}: a probability in [0, 1), got {cfg[key]!r}")
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise ValueError(
            f"{_CONFIG_KEY}: embed_dim={cfg['embed_dim']} is not a multiple of num_heads={cfg['num_heads']}"
        )
    if cfg["patch_h"] != cfg["n_mels"]:
        raise ValueError(
            f"{_CONFIG_KEY}.patch_h={cfg['patch_h']}: ATST-Frame's patches span all n_mels="
            f"{cfg['n_mels']} bins (one token per time step)"
        )
    if cfg["spec_w"] < cfg["patch_w"]:
        raise ValueError(f"{_CONFIG_KEY}.spec_w={cfg['spec_w']}: shorter than one patch (patch_w={cfg['patch_w']})")
    if float(cfg["mlp_ratio"]) <= 0:
        raise ValueError(f"{_CONFIG_KEY}.mlp_ratio: positive, got {cfg['mlp_ratio']!r}")
    return {
        **cfg,
        "mlp_ratio": float(cfg["mlp_ratio"]),
        "qkv_bias": bool(cfg["qkv_bias"]),
        **{k: float(cfg[k]) for k in DROPOUT_KEYS},
    }


# ---------------------------------------------------------------------- checkpoints
#: Where the encoder's weights sit in each published layout: (description, container key or None, key prefix).
LAYOUTS = (
    (
        "the ATST-Frame release layout (atstframe_base.ckpt, its pretraining teacher)",
        "state_dict",
        "model.teacher.encoder.",
    ),
    ("the audiossl fine-tuned layout (e.g. ATST-SED's atst_as2M.ckpt)", "state_dict", "encoder.encoder."),
    ("the PretrainedSED layout (e.g. ATST-F_strong_1.pt)", None, "model.atst."),
)
_ARCHS = {"small": (384, 6), "base": (768, 12), "large": (1024, 16)}  # the reference's arch -> (embed_dim, heads)


class CheckpointError(ValueError):
    """A checkpoint file that cannot give ATST-Frame weights; the message names ``model.encoder.path``."""


def load_atst_frame(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> ATSTFrame:
    """Build ATST-Frame from a checkpoint file in any layout of :data:`LAYOUTS` (the architecture is read from
    the weights' shapes and the file's ``hyper_parameters``; heads default to ``embed_dim // 64``, true of every
    published model). ``overrides`` may set the dropout keys only (the file's training-time rates are not used).
    Anything wrong raises :class:`CheckpointError` naming ``model.encoder.path``."""
    where = f"{_PATH_KEY}={path}"
    bad = sorted(set(overrides or {}) - set(DROPOUT_KEYS))
    if bad:
        raise ValueError(
            f"{_CONFIG_KEY}: {bad} cannot be set when loading {where} (the architecture comes from the "
            f"checkpoint); only {list(DROPOUT_KEYS)} can"
        )
    layout, weights, hparams = _find_weights(_read(Path(os.path.expanduser(str(path))), where), where)
    try:
        model = ATSTFrame({**_config_from(weights, hparams), **(overrides or {})})
        model.load_reference_state_dict(weights)
    except (KeyError, RuntimeError, ValueError) as err:
        msg = " ".join(str(err.args[0] if isinstance(err, KeyError) else err).split())
        raise CheckpointError(f"{where}: {layout}, but {msg}") from err
    return model


def save_atst_frame(model: ATSTFrame, path: str | os.PathLike) -> None:
    """Write ``model`` in ATST-Frame's release layout (``state_dict`` keys ``model.teacher.encoder.*`` and
    ``hyper_parameters``), atomically; :func:`load_atst_frame` and the reference's loaders read it."""
    path = Path(path)
    payload = {
        "state_dict": {
            "model.teacher.encoder." + k: v.detach().cpu().clone() for k, v in model.reference_state_dict().items()
        },
        "hyper_parameters": {**model.config, "spec_h": model.config["n_mels"], "pos_type": "cut", "nprompt": 0},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, where: str) -> Any:
    if not path.exists():
        raise CheckpointError(
            f"{where}: no such file (download a published ATST-Frame checkpoint, e.g. "
            "atstframe_base.ckpt or PretrainedSED's ATST-F_strong_1.pt, and give its path)"
        )
    if path.is_dir():
        raise CheckpointError(f"{where}: a directory; give the checkpoint file (.ckpt or .pt) itself")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise CheckpointError(
                f"{where}: holds a Python object ({unsafe[1]}) that is not unpickled (that could "
                "run code); save the checkpoint's tensors alone"
            ) from err
        raise CheckpointError(f"{where}: unreadable: not a PyTorch checkpoint, or truncated") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{where}: unreadable: not a PyTorch checkpoint, or truncated ({_first_sentence(err)})"
        ) from err


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0].rstrip(".")


def _find_weights(obj: Any, where: str) -> tuple[str, dict[str, Tensor], Mapping[str, Any]]:
    """The layout, the encoder's weights under the reference's names and the file's hyper-parameters."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: holds a {type(obj).__name__}, not a checkpoint dictionary")
    for layout, container, prefix in LAYOUTS:
        source = obj.get(container) if container else obj
        if not isinstance(source, Mapping):
            continue
        weights = {k[len(prefix) :]: v for k, v in source.items() if isinstance(k, str) and k.startswith(prefix)}
        if weights:
            # Older ATST releases name the final norm `norm` and carry an unused class token (ATST-SED's loader).
            weights = {
                ("norm_frame" + k[4:] if k.startswith("norm.") else k): v
                for k, v in weights.items()
                if k != "cls_token"
            }
            hparams = obj.get("hyper_parameters")
            return layout, weights, hparams if isinstance(hparams, Mapping) else {}
    keys = sorted(str(k) for k in obj)
    if "cfg" in obj and "model" in obj:
        family = "a BEATs checkpoint (keys 'cfg' and 'model'), not ATST-Frame"
    else:
        family = f"no ATST-Frame weights in it (top-level keys {_few(keys)})"
    expected = "; ".join(f"{name}: {f'{c!r} with ' if c else ''}keys '{p}*'" for name, c, p in LAYOUTS)
    raise CheckpointError(f"{where}: {family}; expected one of: {expected}")


def _config_from(weights: Mapping[str, Tensor], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture of the weights (shapes) completed by the file's hyper-parameters."""
    need = ("pos_embed", "patch_embed.patch_embed.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in weights]
    if missing:
        raise KeyError(f"missing keys {_few(missing)}")
    if int(hparams.get("nprompt", 0) or 0) or "prompt_embed" in weights:
        raise ValueError("with prompt tokens (nprompt > 0), which ATST-Frame for SED does not use")
    if hparams.get("pos_type", "cut") != "cut":
        raise ValueError(f"pos_type={hparams['pos_type']!r} (interpolated positions); only 'cut' is supported")
    dim = int(weights["pos_embed"].shape[-1])
    n_mels = int(hparams.get("n_mels", hparams.get("spec_h", DEFAULTS["n_mels"])))
    patch_w = int(hparams.get("patch_w", weights["patch_embed.patch_embed.weight"].shape[1] // n_mels))
    arch_dim, arch_heads = _ARCHS.get(str(hparams.get("arch")), (None, None))
    heads = hparams.get("num_heads", arch_heads if arch_dim == dim else max(1, dim // 64))
    return dict(
        embed_dim=dim,
        depth=1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks.")),
        num_heads=int(heads),
        mlp_ratio=weights["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in weights,
        n_mels=n_mels,
        patch_h=int(hparams.get("patch_h", n_mels)),
        patch_w=patch_w,
        spec_w=int(hparams.get("spec_w", (weights["pos_embed"].shape[1] - 1) * patch_w + 1)),
    )
