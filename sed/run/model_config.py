"""The schema of the shipped models (``model``: the CRNN, the CRNN with a pretrained encoder, the frame-level model,
and ``model.encoder``): part of :mod:`sed.run.config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class ModelConfig:
    """Schema of the CRNN (``model=crnn``, ``crnn_small``).

    ``model`` may name any ``nn.Module`` instead (``model._target_``, or a ``conf/model/NAME.yaml`` of your own with
    its own keys; only a ``sed.models.crnn.CRNN`` node is checked against this schema). The contract such a module
    keeps: it is built as ``Module(**keys, n_classes=C, n_features=F)``; ``forward(features)`` takes
    ``[B, F, T]`` features and returns :class:`sed.models.crnn.CRNNOutput` (``strong_logits``, ``strong``:
    ``[B, C, T // time_pooling]``, one trailing extra frame allowed; ``weak_logits``, ``weak``: ``[B, C]``;
    probabilities are the sigmoids of the logits); and it has an int attribute ``time_pooling``. Trained on several
    datasets of which some annotate only some classes (``data.datasets``), it is also called with
    ``class_mask=`` ``[B, C]`` (bool, the classes each clip's dataset annotates: the CRNN masks its attention
    pooling with it).
    """

    _target_: str = "sed.models.crnn.CRNN"
    n_in_channels: int = 1
    filters: List[int] = field(default_factory=lambda: [16, 32, 64, 128, 128, 128, 128])
    pooling: List[List[int]] = field(default_factory=lambda: [[2, 2], [2, 2], [1, 2], [1, 2], [1, 2], [1, 2], [1, 2]])
    kernel_size: int = 3
    dropout: float = 0.5
    activation: str = "glu"  # glu | cg | relu
    rnn_hidden: int = 128
    rnn_layers: int = 2
    rnn_dropout: float = 0.0
    dropout_recurrent_out: float = 0.5
    attention: bool = True
    bn_eps: float = 1e-3
    # PyTorch convention (weight of the new batch). The DCASE baseline's 0.99 makes the running statistics
    # follow the last batch almost alone; desed_crnn keeps it for fidelity.
    bn_momentum: float = 0.1
    # CNN activations in channels-last (NHWC) memory: the GLU's per-position Linear reads them without a copy
    # (a 1.1x faster DESED step on CPU); the same numbers up to float rounding.
    channels_last: bool = True
    # Dropout masks on the CPU cut from random 64-bit words (sed/models/dropout.py): the same Bernoulli masks
    # without torch's serial per-element draws (a third of a DESED step on an AMD CPU), but other draws than
    # nn.Dropout's; false reproduces nn.Dropout's stream. GPUs always use torch's dropout.
    fast_dropout: bool = True


@dataclass
class EncoderConfig:
    """A pretrained audio encoder of sed.models.encoders (``model.encoder``): the family (``_target_``: AST, BEATs,
    ATST-Frame; without it, AST as before the interface), its checkpoint (``path``) or random configuration
    (``config``), and the interface's keys (sed/models/encoders/base.py; docs/encoders.md). A ``_target_`` of
    your own is checked by its constructor instead."""

    _target_: str = "sed.models.encoders.ast.ASTEncoder"
    path: Optional[str] = None  # the published checkpoint (a folder for AST, a .pt file for BEATs / ATST-Frame)
    config: Any = None  # the family's keys of a randomly initialised model (tests), when path is null
    sample_rate: int = 16000  # of the audio given (conf/model/encoder/*.yaml: ${data.sample_rate})
    layer: Any = "last"  # last | weighted (learned softmax weights over all layers) | a layer index
    frozen: bool = True
    finetune_after_epoch: Optional[int] = None  # with frozen: fine-tune from this (0-based) epoch on
    freeze_layers: int = 0  # when fine-tuning, the lowest K layers (and the patch embedding) stay frozen
    lr: Optional[float] = None  # learning rate of the top layer when fine-tuning (null: training.lr)
    layer_decay: float = 1.0  # each layer below the top: this times the rate of the one above
    gradient_checkpointing: bool = False  # fine-tuning: recompute layer activations in the backward (memory)
    cache: bool = True  # frozen: embeddings computed once per clip and kept in memory
    cache_max_gb: float = 4.0
    cache_dir: Optional[str] = None  # frozen: embeddings kept on disk too, shared by runs (a new or ours folder)
    cache_dtype: str = "float32"  # float16 halves the disk cache (every embedding is rounded to it)


@dataclass
class BEATsEncoderConfig(EncoderConfig):
    """BEATs' node: the interface's keys and how its patch tokens become frames."""

    _target_: str = "sed.models.encoders.published.BEATsEncoder"
    frames: str = "columns"  # columns: tokens averaged per time column (0.16 s) | tokens: as the 2024 baseline


@dataclass
class PretrainedCRNNConfig(ModelConfig):
    """Schema of ``model=crnn_ast`` / ``crnn_beats`` (sed.models.pretrained_crnn.PretrainedCRNN): the CRNN's keys,
    the encoder node (checked against EncoderConfig when it names a shipped family), the fusion and the width of
    the projected embeddings appended to the CNN output."""

    _target_: str = "sed.models.pretrained_crnn.PretrainedCRNN"
    embedding_dim: int = 128
    fusion: str = "project_then_concat"  # | concat_then_project (the DCASE 2024 baseline's)
    encoder: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FrameLevelConfig:
    """Schema of ``model=frame_beats`` / ``frame_atst`` (sed.models.frame_level.FrameLevelSED): an encoder and a
    light head on the label grid of ``time_pooling`` front-end frames."""

    _target_: str = "sed.models.frame_level.FrameLevelSED"
    encoder: Dict[str, Any] = field(default_factory=dict)
    head: str = "bigru"  # | linear
    rnn_hidden: int = 256
    rnn_layers: int = 2
    dropout: float = 0.0
    attention: bool = True
    time_pooling: int = 4
    fast_dropout: bool = True
