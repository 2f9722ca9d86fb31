"""The transformer of BEATs (arXiv 2212.09058): a convolutional positional embedding, then post-norm (optionally
DeepNorm-scaled) or pre-norm layers whose self-attention adds a gated relative position bias.

Tensors are ``[batch, tokens, dim]`` throughout. Parameter names follow Microsoft's released state dicts
(``self_attn.q_proj``, ``grep_linear``, ``final_layer_norm``...), so a checkpoint loads by name; the one exception
is the weight-normed positional convolution (see :class:`ConvPositionalEmbedding`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Queries are divided by this before the dot products and the scores multiplied back after subtracting their
# row maximum: the same softmax, without overflowing half precision (the released models' numerics).
_SCORE_SHRINK = 32.0


class GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (BEATs' layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def activation(name: str):
    """The feed-forward nonlinearity named in the config. GELU runs in float32, as the released models did."""
    if name == "gelu":
        return lambda x: F.gelu(x.float()).type_as(x)
    if name in ("gelu_accurate", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    if name == "linear":
        return lambda x: x
    raise ValueError(f"activation_fn={name!r} is not supported (gelu, gelu_accurate, gelu_fast, relu, tanh, linear)")


def relative_position_buckets(
    n_query: int, n_key: int, n_buckets: int, max_distance: int, device: torch.device | None = None
) -> Tensor:
    """``[n_query, n_key]`` bucket of each offset ``key - query`` (T5-style, both directions): half the buckets
    per sign; offsets below a quarter of the buckets get one bucket each, larger ones share logarithmically wider
    buckets up to ``max_distance``, beyond which they share the last."""
    offset = torch.arange(n_key, device=device)[None, :] - torch.arange(n_query, device=device)[:, None]
    half = n_buckets // 2
    exact = half // 2
    distance = offset.abs()
    far = distance.clamp_min(exact).float()  # the near offsets take the other branch of the where below
    far_bucket = exact + (torch.log(far / exact) / math.log(max_distance / exact) * (half - exact)).long()
    bucket = torch.where(distance < exact, distance, far_bucket.clamp_max(half - 1))
    return bucket + (offset > 0).long() * half


class ConvPositionalEmbedding(nn.Module):
    """Grouped 1-D convolution over time with weight normalisation (magnitude ``weight_g [1, 1, K]`` per kernel
    tap, direction ``weight_v``), 'same' output length (the extra output of an even kernel is dropped), GELU.

    The two weight-norm tensors are plain parameters here; checkpoints name them ``pos_conv.0.weight_g/_v``
    (``nn.utils.weight_norm``) or ``pos_conv.0.parametrizations.weight.original0/1`` (today's
    ``parametrizations.weight_norm``); the loader maps both onto these names.
    """

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"encoder_embed_dim={dim} is not divisible by conv_pos_groups={groups}")
        self.kernel, self.groups = kernel, groups
        v = torch.randn(dim, dim // groups, kernel) * math.sqrt(4.0 / (kernel * dim))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(dim))

    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv1d(x.transpose(1, 2), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class GatedRelativeAttention(nn.Module):
    """Multi-head self-attention; with ``gated``, each query scales the shared relative position bias of its head
    by a gate computed from the query itself: ``a * (b * grep_a - 1) + 2`` with ``a, b`` two sigmoids of sums of
    four outputs of ``grep_linear`` (BEATs' gated relative position bias, from WavLM)."""

    def __init__(self, dim: int, heads: int, dropout: float, n_buckets: int | None, gated: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder_embed_dim={dim} is not divisible by encoder_attention_heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        if n_buckets is not None:  # only the first layer holds the table; the encoder shares its output
            self.relative_attention_bias = nn.Embedding(n_buckets, heads)
        self.gated = gated
        if gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # [B, H, T, head_dim]

    def forward(self, x: Tensor, key_padding: Tensor | None, position_bias: Tensor | None) -> Tensor:
        """``x [B, T, D]``; ``key_padding [B, T]`` True where a token is padding; ``position_bias [H, T, T]``."""
        query = self._split(self.q_proj(x))
        key, value = self._split(self.k_proj(x)), self._split(self.v_proj(x))
        scores = (query * (self.head_dim**-0.5 / _SCORE_SHRINK)) @ key.transpose(-1, -2)
        scores = (scores - scores.amax(-1, keepdim=True)) * _SCORE_SHRINK
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        if position_bias is not None:
            if self.gated:
                a, b = torch.sigmoid(self.grep_linear(query).unflatten(-1, (2, 4)).sum(-1)).unbind(-1)
                position_bias = (a * (b * self.grep_a[..., 0] - 1.0) + 2.0)[..., None] * position_bias
            scores = scores + position_bias
        weights = self.dropout(torch.softmax(scores.float(), -1).type_as(value))
        return self.out_proj((weights @ value).transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with a residual. Post-norm: ``norm(residual * alpha + f(x))``
    (``alpha = (2 * layers) ** 0.25`` with DeepNorm, else 1); pre-norm: ``residual + f(norm(x))``."""

    def __init__(self, cfg: dict, relative_table: bool) -> None:
        super().__init__()
        dim = cfg["encoder_embed_dim"]
        buckets = cfg["num_buckets"] if relative_table else None
        self.self_attn = GatedRelativeAttention(
            dim,
            cfg["encoder_attention_heads"],
            cfg["attention_dropout"],
            buckets,
            cfg["gru_rel_pos"] and cfg["relative_position_embedding"],
        )
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg["encoder_ffn_embed_dim"])
        self.fc2 = nn.Linear(cfg["encoder_ffn_embed_dim"], dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = activation(cfg["activation_fn"])
        self.dropout, self.activation_dropout = nn.Dropout(cfg["dropout"]), nn.Dropout(cfg["activation_dropout"])
        self.pre_norm = cfg["layer_norm_first"]
        self.alpha = (2 * cfg["encoder_layers"]) ** 0.25 if cfg["deep_norm"] else 1.0

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x: Tensor, key_padding: Tensor | None, position_bias: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), key_padding, position_bias))
            return x + self._feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout(self.self_attn(x, key_padding, position_bias)))
        return self.final_layer_norm(x * self.alpha + self._feed_forward(x))


class Encoder(nn.Module):
    """Positional convolution (added to the input), layer norm (before the layers in post-norm models, after
    them in pre-norm ones), and the layers; returns every layer's output."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        dim = cfg["encoder_embed_dim"]
        self.pos_conv = ConvPositionalEmbedding(dim, cfg["conv_pos"], cfg["conv_pos_groups"])
        relative = cfg["relative_position_embedding"]
        self.layers = nn.ModuleList(EncoderLayer(cfg, relative and i == 0) for i in range(cfg["encoder_layers"]))
        self.layer_norm = nn.LayerNorm(dim)
        self.pre_norm = cfg["layer_norm_first"]
        self.dropout = nn.Dropout(cfg["dropout"])
        self.layerdrop = cfg["encoder_layerdrop"]
        self.grad_decay = cfg["layer_wise_gradient_decay_ratio"]
        self.relative = (cfg["num_buckets"], cfg["max_distance"]) if relative else None

    def position_bias(self, n_tokens: int, device: torch.device) -> Tensor | None:
        """``[H, T, T]`` relative position bias before gating, shared by all layers (the first layer's table)."""
        if self.relative is None:
            return None
        buckets = relative_position_buckets(n_tokens, n_tokens, *self.relative, device=device)
        return self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> list[Tensor]:
        """``x [B, T, D]`` -> each layer's output ``[B, T, D]``; the last includes the final norm of pre-norm
        models. Padding tokens are zeroed before the positional convolution and never attended to."""
        if key_padding is not None:
            x = x.masked_fill(key_padding[..., None], 0.0)
        x = x + self.pos_conv(x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)
        bias = self.position_bias(x.shape[1], x.device)
        outputs = []
        for layer in self.layers:
            if self.grad_decay != 1.0:
                x = GradScale.apply(x, self.grad_decay)
            if not (self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop):
                x = layer(x, key_padding, bias)
            outputs.append(x)
        if self.pre_norm:
            outputs[-1] = self.layer_norm(outputs[-1])
        return outputs
