"""Typed configuration schema.

Every YAML file under ``conf/`` is merged onto these dataclasses, so a misspelled or unknown key fails at
start-up with its name (``Key 'lrr' not in 'TrainingConfig'``) instead of being silently ignored.
Classes carrying ``_target_`` are built with ``hydra.utils.instantiate``; the keys a class derives from other
parts of the configuration (number of classes, number of features) are passed at build time, never duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from sed.run.data_config import (  # noqa: F401  (part of this schema)
    DataConfig,
    DatasetConfig,
    EvalSetConfig,
    GenerateSizesConfig,
    PathsConfig,
    TrainSubsetConfig,
)
from sed.run.model_config import (  # noqa: F401
    BEATsEncoderConfig,
    EncoderConfig,
    FrameLevelConfig,
    ModelConfig,
    PretrainedCRNNConfig,
)
from sed.utils.errors import UserError
from sed.utils.moved import MOVED_TARGETS, upgrade_targets  # noqa: F401  (re-exported: the schema's)


@dataclass
class FeaturesConfig:
    _target_: str = "sed.features.frontend.FrontEnd"
    kind: str = "mel"  # mel | mfcc | stft
    sample_rate: int = "${data.sample_rate}"  # type: ignore[assignment]
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    n_mfcc: int = 40
    db_range: List[float] = field(default_factory=lambda: [-50.0, 80.0])
    amin: float = 1e-5
    # Rate of the audio the model takes (the loader passes files at this rate; the front-end resamples to
    # sample_rate on the device, inside the graph): null = the model's rate (the loader resamples); a rate in Hz;
    # or "auto": the files' rate when they all share one that differs from the model's (read from their headers).
    input_sample_rate: Any = None


@dataclass
class ScalerConfig:
    _target_: str = "sed.features.scaler.TorchScaler"
    statistic: str = "instance"  # instance | dataset
    normtype: str = "minmax"  # standard | mean | minmax
    dims: List[int] = field(default_factory=lambda: [1, 2])
    eps: float = 1e-8
    minmax_range: List[float] = field(default_factory=lambda: [0.0, 1.0])
    # A scaler file fitted earlier (dataset statistic): loaded instead of refitting, refused if its
    # front-end configuration differs from this run's.
    path: Optional[str] = None


@dataclass
class MixupConfig:
    enabled: bool = True
    prob: float = 0.5
    mode: str = "soft"  # soft: labels mixed like the inputs; hard: union of the two label sets
    alpha: float = 0.2  # Beta(alpha, alpha) mixing coefficient
    domain: str = (
        "features"  # features: the normalised log features; linear: magnitudes before log and scaler (DCASE baseline)
    )
    shared_draw: bool = False  # one coin flip decides for both labelled subsets (DCASE baseline); else one per subset


@dataclass
class FilterAugmentConfig:
    """FilterAugment (Nam et al. 2022): random band gains on the student's magnitude spectrogram."""

    prob: float = 0.0  # per clip; 0: off
    db_range: List[float] = field(default_factory=lambda: [-6.0, 6.0])  # gains uniform in [low, high] dB
    n_bands: List[int] = field(default_factory=lambda: [3, 6])  # number of bands uniform in [min, max]
    min_bandwidth: int = 6  # narrowest band, in bins of the spectrum (mel bands for mel/mfcc)
    kind: str = "linear"  # step: one gain per band; linear: gains at band edges, interpolated


@dataclass
class FrameShiftConfig:
    """Circular time shift of both models' input and the strong targets, in whole output frames."""

    prob: float = 0.0  # per clip; 0: off
    std_frames: float = 90.0  # shift ~ N(0, std) feature frames (DCASE baseline: 90), rounded to output frames


@dataclass
class SpecAugmentConfig:
    """SpecAugment-style time and frequency masks (row mean) on the student's normalised features."""

    prob: float = 0.0  # per clip; 0: off
    time_mask: int = 20  # longest time mask, in feature frames
    freq_mask: int = 10  # widest frequency mask, in feature bins
    n_masks: int = 1  # time masks and frequency masks per clip


@dataclass
class AugmentConfig:
    filter_augment: FilterAugmentConfig = field(default_factory=FilterAugmentConfig)
    frame_shift: FrameShiftConfig = field(default_factory=FrameShiftConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


@dataclass
class TrainingConfig:
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_epochs: int = 50  # exponential learning-rate and consistency ramp-up
    warmup_fraction: Optional[float] = None  # set: the ramp-up is this share of the run's steps (not warmup_epochs)
    schedule: str = "constant"  # after warm-up: constant | cosine | quarter_cosine (DCASE 2024: from decay_start_epoch)
    decay_start_epoch: Optional[int] = None  # the decay starts here (null: after the warm-up)
    min_lr: float = 1e-5  # end of the cosine decay
    ema_factor: float = 0.999
    # set: the teacher averages about this share of the run's last steps (EMA factor 1 - 1/(horizon * steps))
    ema_horizon: Optional[float] = None
    # Average the student's BatchNorm statistics into the teacher too; false: only parameters, the teacher's
    # statistics come from its own training-mode forwards (DCASE baseline).
    ema_buffers: bool = True
    consistency_max: float = 2.0
    strong_weight: float = 1.0
    weak_weight: float = 1.0
    # Strong loss: each class's positive frames weighted by (median class's active-frame share / its share) ** this
    # power, at least 1, shares from the strong training labels (sed.training.losses.class_balance_weights): short or
    # rare events (few positive frames) are learnt as early as the others. 0: unweighted (DCASE baseline).
    class_balance: float = 0.0
    mixup: MixupConfig = field(default_factory=MixupConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # torch.compile the student and teacher for the training step (sed/training/execution.py; the first step
    # compiles, 1-3 min on CPU; dropout masks then come from inductor's generator, not eager bernoulli_).
    compile: bool = False


@dataclass
class TuningConfig:
    """What post-processing tuning on the validation set searches (sed.evaluation.tuning)."""

    # Candidate median-filter lengths (frames); each class takes the one maximising its validation `window_metric`.
    # Also the filter set of piPSDS (evaluation.pipsds).
    median_windows: List[int] = field(default_factory=lambda: [1, 3, 5, 7, 9, 13, 17, 21])
    window_metric: str = "psds1"  # psds1 | psds2: per-class PSDS on validation (threshold-free)
    thresholds: bool = True  # also class-wise decision thresholds maximising each class's validation F1
    threshold_metric: str = "event_f1"  # event_f1 (collar-based, sed_eval's) | intersection_f1
    # evaluation.postprocessing=sebbs: the grid sebbs.csebbs.tune searches (its defaults, DCASE 2024's).
    sebbs_step_filter_lengths: List[float] = field(default_factory=lambda: [0.32, 0.48, 0.64])  # seconds
    sebbs_merge_thresholds_abs: List[float] = field(default_factory=lambda: [0.15, 0.2, 0.3])
    sebbs_merge_thresholds_rel: List[float] = field(default_factory=lambda: [1.5, 2.0, 3.0])


@dataclass
class EvaluationConfig:
    median_window: List[int] = field(default_factory=lambda: [7])  # one length, or one per class
    thresholds: List[float] = field(default_factory=lambda: [0.5])
    # Post-processing of the test outputs: median (evaluation.median_window, or tuned) | sebbs (Sound Event Bounding
    # Boxes, pip install sebbs; always tuned on validation).
    postprocessing: str = "median"
    # Tune the post-processing on the validation set at test time (the tested checkpoint's outputs on the validation
    # set, never the test set): class-wise median windows and thresholds, saved with the model.
    tune_postprocessing: bool = False
    tuning: TuningConfig = field(default_factory=TuningConfig)
    pipsds: bool = True  # also piPSDS (post-processing independent PSDS over tuning.median_windows) at test time
    save_validation_scores: bool = False  # also write validation/<model>/scores_raw/ at test time (offline tuning)
    # Selects the best checkpoint, logged as val/obj_metric: any '+'-joined sum of weak_f1, psds1, psds2,
    # intersection_f1, event_f1 (a psds set), mpauc, mauc, segment_f1_best (an mpauc set). With several datasets each
    # term names the dataset whose validation set gives it: desed.psds1+maestro.mpauc.
    obj_metric: str = "weak_f1+intersection_f1"
    obj_model: str = "student"  # student | teacher
    psds_bootstrap: int = 0  # >0: bootstrapped 95% confidence interval of PSDS at test time
    # Processes scoring the student and the teacher at the same time (validation and test): auto = 2 on machines
    # with >= 4 CPUs (GPU machines: the device waits while the CPU scores), 0 (one after the other) below.
    scoring_workers: Any = "auto"
    # Validation computes every metric (PSDS1, intersection, event and segment F1: the TensorBoard curves) every this
    # many epochs and at the last; at the other epochs only the terms of obj_metric, which is what selects the
    # checkpoint (0: always only those). Scoring is most of a validation on a GPU (benchmarks/README.md).
    full_metrics_every_n_epochs: int = 1
    plot_every_n_epochs: int = 5  # TensorBoard figures of validation clips (0: never)
    n_plot_clips: int = 3


@dataclass
class TrainerConfig:
    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: Any = "auto"
    num_nodes: int = 1
    max_epochs: int = 200
    max_steps: int = -1
    fast_dev_run: Any = False  # True or N: N batches of each stage, nothing saved but last.ckpt (debug=fast_dev_run)
    precision: Any = "32-true"
    gradient_clip_val: Optional[float] = 5.0
    accumulate_grad_batches: int = 1
    deterministic: Any = False
    benchmark: Optional[bool] = None
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    # The mixed-batch sampler shards data across processes itself.
    use_distributed_sampler: bool = False


@dataclass
class CheckpointConfig:
    _target_: str = "pytorch_lightning.callbacks.ModelCheckpoint"
    dirpath: str = "${paths.run_dir}/checkpoints"
    filename: str = "epoch{epoch:03d}"
    auto_insert_metric_name: bool = False
    monitor: Optional[str] = "val/obj_metric"
    mode: str = "max"
    save_top_k: int = 1
    save_last: bool = True  # last.ckpt: rewritten at the end of every epoch, and on SIGTERM/SIGINT
    every_n_epochs: Optional[int] = None
    every_n_train_steps: Optional[int] = None  # also rewrite last.ckpt every N optimiser steps (long epochs)


# Schemas of the `_target_`s the configuration ships, checked by check_known_keys wherever such a node appears in
# a free-form group (model, callbacks.<name>); a `_target_` of your own is checked by its constructor.
KNOWN_TARGETS: Dict[str, type] = {
    "sed.models.crnn.CRNN": ModelConfig,
    "sed.models.pretrained_crnn.PretrainedCRNN": PretrainedCRNNConfig,
    "sed.models.frame_level.FrameLevelSED": FrameLevelConfig,
    "sed.models.encoders.ast.ASTEncoder": EncoderConfig,
    "sed.models.encoders.published.BEATsEncoder": BEATsEncoderConfig,
    "sed.models.encoders.published.ATSTFrameEncoder": EncoderConfig,
    "pytorch_lightning.callbacks.ModelCheckpoint": CheckpointConfig,
}


@dataclass
class EnergyConfig:
    """Energy of training and testing, measured with codecarbon offline (sed.dcase.energy; DCASE asks for it)."""

    _target_: str = "sed.dcase.energy.EnergyTracker"
    enabled: bool = True
    country_iso_code: str = "FRA"  # ISO 3166-1 alpha-3: carbon intensity of the electricity (not the kWh)
    measure_power_secs: float = 15.0  # seconds between power readings
    tracking_mode: str = "machine"  # machine (whole machine) | process (this process's CPU share)


@dataclass
class Config:
    exp_name: str = "default"
    seed: int = 42
    train: bool = True
    test: bool = True
    ckpt_path: Optional[str] = None  # resume training from it (train=true) or evaluate it (train=false)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    scaler: ScalerConfig = field(default_factory=ScalerConfig)
    # Free-form `_target_` groups (conf/model, conf/optimizer, ...): any class with its own keys; the shipped
    # targets are checked against their schemas (KNOWN_TARGETS). Left empty (a Config built in code), model,
    # optimizer and scheduler mean the CRNN, Adam and the warm-up schedule (default_node).
    model: Dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # `_partial_` factories: optimizer(params); scheduler(optimizer[, total_steps=, steps_per_epoch=]) plus the
    # Lightning keys interval/frequency/monitor (sed.training.module.SEDModule.configure_optimizers).
    optimizer: Dict[str, Any] = field(default_factory=dict)
    scheduler: Dict[str, Any] = field(default_factory=dict)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # {name: `_target_` node or null}: every node with a `_target_` is instantiated (sed.run.job.build_trainer).
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    energy: EnergyConfig = field(default_factory=EnergyConfig)


class UnknownKeyError(ConfigKeyError, UserError):
    """A configuration key the schema does not know (a misspelling, or a key of another model)."""


class ConfigValueError(ValidationError, UserError):
    """A configuration value of the wrong type for its key."""


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not know, however they were added: Hydra checks plain overrides against the
    schema, but ``+key=value`` (the form its own error message suggests) adds a key that would be ignored."""
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, resolve=False))
        for key, node in _target_nodes(cfg):
            default = {"model": "sed.models.crnn.CRNN", "model.encoder": EncoderConfig._target_}.get(key)
            schema = KNOWN_TARGETS.get(node.get("_target_", default))
            if schema is not None:
                checked = OmegaConf.structured(schema)
                OmegaConf.set_struct(checked, True)
                container = OmegaConf.to_container(node, resolve=False)
                if key == "model" and "encoder" in checked:
                    container.pop("encoder", None)  # a node of its own, checked against its own schema
                try:
                    OmegaConf.merge(checked, container)
                except (ConfigKeyError, ValidationError) as err:
                    err.full_key = f"{key}.{err.key}" if err.key is not None else key
                    raise
    except ConfigKeyError as err:
        raise UnknownKeyError(
            f"unknown configuration key '{err.full_key}': it is not in the schema (sed/run/config.py), so it would be "
            "ignored; check its spelling"
        ) from None
    except ValidationError as err:
        raise ConfigValueError(f"configuration key '{err.full_key}': {err.msg}") from None


def default_node(group: str, cfg: Any) -> Optional[dict[str, Any]]:
    """The node of ``group`` ("model", "optimizer", "scheduler") of a run configuration, resolved.

    A configuration built in code from :class:`Config` (benchmarks, tests) or saved before these groups existed
    leaves them empty or absent: they then mean what conf/config.yaml's defaults mean, the CRNN (with the
    schema's defaults under the given keys), ``optimizer=adam`` and ``scheduler=exp_warmup`` on ``training.*``.
    ``scheduler: {_target_: null}`` (``scheduler=none``) is no scheduler: None.
    """
    node = cfg.get(group) if hasattr(cfg, "get") else None
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    if "_target_" in node:
        return node if node["_target_"] is not None else None
    t = cfg.training
    if group == "model":
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), node)
        return OmegaConf.to_container(merged, resolve=True)
    if group == "optimizer":
        return {
            "_target_": "torch.optim.Adam",
            "_partial_": True,
            "lr": t.lr,
            "betas": list(t.betas),
            "weight_decay": t.weight_decay,
            **node,
        }
    if group == "scheduler":
        return {
            "_target_": "sed.training.schedules.warmup_lambda_lr",
            "_partial_": True,
            "warmup_epochs": t.warmup_epochs,
            "warmup_fraction": t.warmup_fraction,
            "schedule": t.schedule,
            "min_lr": t.min_lr,
            "decay_start_epoch": t.get("decay_start_epoch"),
            "interval": "step",
            "frequency": 1,
            "monitor": None,
            **node,
        }
    raise KeyError(group)


def _target_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The `_target_` nodes of the free-form groups, with their dotted keys."""
    nodes = []
    if isinstance(cfg.get("model"), DictConfig):
        nodes.append(("model", cfg.model))
        if isinstance(cfg.model.get("encoder"), DictConfig):  # a pretrained audio encoder's node
            nodes.append(("model.encoder", cfg.model.encoder))
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and "_target_" in node:
                nodes.append((f"{group}.{name}", node))
    return nodes


def register_configs() -> None:
    """Register the schema as ``base_config`` (first in conf/config.yaml's defaults, so every group file and
    command-line override is merged onto it and checked) and the run-directory resolvers (sed.run.rundir)."""
    from sed.run import rundir

    for name, fn in (
        ("sed_run_dir", rundir.choose_run_dir),
        ("sed_new_dir", rundir.new_dir),
        ("sed_config_subdir", rundir.config_subdir),
    ):
        if not OmegaConf.has_resolver(name):
            # sed_new_dir is cached in the config, so that sweep jobs run in other processes (submitit) get the
            # sweep directory the launcher claimed (Hydra copies the cache into each job's config).
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "sed_new_dir")
    ConfigStore.instance().store(name="base_config", node=Config)


def check_override_syntax(argv: list[str]) -> None:
    """Refuse, in one line with the fix, a command-line override that Hydra's grammar cannot read because of a
    non-ASCII character outside quotes (``data.root=/data/ünï``): Hydra's lexer fails on it with no hint.
    train.py calls it before ``hydra.main`` reads ``sys.argv``; any other parse error is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = None
    for arg in argv[1:]:
        if arg.startswith("-") or "=" not in arg or arg.isascii():
            continue
        parser = parser or OverridesParser.create()
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            key, value = arg.split("=", 1)
            char = next(c for c in arg if not c.isascii())
            if value.startswith("[") or value.startswith("{"):
                fix = f'quote each item that has one, e.g. {key}=["item",...]'
            else:
                fix = f"quote it, e.g. '{key}=\"{value}\"' (the outer quotes for the shell)"
            raise SystemExit(
                f"error: {arg}: Hydra's override grammar takes a non-ASCII character ({char!r}) only "
                f"in a quoted value: {fix}"
            ) from None


def accept_appended_exp(argv: list[str]) -> None:
    """Rewrite ``+exp=NAME`` to ``exp=NAME`` in place.

    ``exp`` is in the defaults list (``exp: null``), so ``exp=NAME`` selects a recipe; Hydra refuses the appending
    form ``+exp=NAME`` for a group already in the list, but it is what this project documented first (and what
    Hydra's own error message suggests), so both are accepted. train.py calls it before ``hydra.main`` reads
    ``sys.argv``.
    """
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("+exp="):
            argv[i] = arg[1:]


register_configs()
