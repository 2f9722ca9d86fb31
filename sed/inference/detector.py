"""The detector: a trained checkpoint or an exported model applied to audio files of any length
(``python -m sed.infer`` is its command line, :mod:`sed.infer`).

The model was trained on fixed-length clips, so a recording is cut into overlapping windows of that
length (the last one zero-padded). Every window's frame probabilities land on one common frame grid
(the label encoder's frame duration); where windows overlap, the probabilities are averaged
(:class:`sed.evaluation.windows.WindowGrid`, which the evaluation of long test clips during training shares). The
model's median filter is applied to the merged sequence, then probabilities are thresholded into events.
Frame boundaries and event times are those of the test outputs of ``train.py`` (``events_th*.tsv``): the
frame grid from 0, the last frame cut at the end of the recording.

Python::

    detector = Detector.from_checkpoint("best.ckpt")            # or Detector.from_exported("model.onnx")
    probs, timestamps = detector.predict(wav, sample_rate)     # [C, T], T + 1 frame boundaries
    events = detector.detect_file("kitchen.wav")              # DataFrame filename, onset, offset, event_label
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from sed.data.audio import NONFINITE_POLICIES, AudioError, read_raw, resample
from sed.data.inputs import check_outputs
from sed.data.tsv import STRONG_COLUMNS, write_strong
from sed.evaluation.postprocess import (
    audio_id,
    detections_from_scores,
    median_filter,
    scores_dataframe,
)
from sed.evaluation.settings import (
    Threshold,
    check_median_window,
)
from sed.evaluation.tuning import (
    PostprocessingSettings,
    describe,
    load_settings,
    settings_path_for,
)
from sed.evaluation.windows import WindowGrid
from sed.inference.exported_model import DetectorMetadata, ExportedModel

logger = logging.getLogger(__name__)

MODELS = ("teacher", "student")
PathLike = Union[str, os.PathLike]


class Prediction(NamedTuple):
    """Frame probabilities of one recording.

    ``probabilities`` is ``[C, T]`` (class order of the checkpoint); ``timestamps`` holds the ``T + 1``
    frame boundaries in seconds: ``f * frame_duration``, the last one cut at the end of the recording when the
    last frame runs past it (as the test outputs of ``train.py`` are).
    """

    probabilities: np.ndarray
    timestamps: np.ndarray
    boxes: bool = False  # post-processing is SEBBs: scores() turns the (raw) probabilities into bounding boxes


class RunResult(NamedTuple):
    """What :meth:`Detector.run` did: the events of the files processed, one message per file that was not."""

    events: pd.DataFrame
    failed: list[str]  # "<path>: <why>", one line each


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(STRONG_COLUMNS, [object, float, float, object])})


class Detector:
    """A trained network with its front-end, scaler, frame grid and post-processing.

    Args:
        module: a :class:`sed.training.module.SEDModule` (its configuration gives sample rate, clip length,
            median filter and thresholds), or an :class:`sed.inference.exported_model.ExportedModel` (a file written by
            ``python -m sed.export``, carrying the same in its metadata).
        model: ``"teacher"`` or ``"student"`` (default for a module: the one validation preferred, recorded in its
            checkpoint as ``preferred_model``); an exported model holds one network,
            named in its metadata (another name here is an error).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; ``None`` picks CUDA when available for a module, the
            CPU for an exported model (which is loaded on its device already).
        hop: seconds between window starts; ``None`` is half a window. Rounded to whole output
            frames so every window falls on the common frame grid.
        batch_size: windows per forward pass.
        median_window: filter length in frames, one for all classes or one per class (class order);
            ``None``: the model's (``evaluation.median_window``, or the tuned windows of ``postprocessing``).
        postprocessing: post-processing tuned on validation (:class:`sed.evaluation.tuning.PostprocessingSettings`,
            from ``train.py evaluation.tune_postprocessing=true`` or ``evaluation.postprocessing=sebbs``): its
            class-wise median windows or SEBBs, and its class-wise thresholds as the default threshold.
            :meth:`from_checkpoint` finds the file saved beside the checkpoint by itself.
    """

    def __init__(
        self,
        module,
        model: Optional[str] = None,
        device: Optional[str] = None,
        hop: Optional[float] = None,
        batch_size: int = 8,
        median_window: int | Sequence[int] | None = None,
        postprocessing: Optional[PostprocessingSettings] = None,
    ) -> None:
        if model is not None and model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(module, ExportedModel):
            metadata = module.metadata
            if model is not None and model != metadata.model:
                raise ValueError(f"{module.path} holds the {metadata.model}, not the {model} (exported with --model)")
            self.device = torch.device(module.device)
            self.module = self.network = self.encoder = None
            self.exported: Optional[ExportedModel] = module
            model = metadata.model
            if postprocessing is None and metadata.extra.get("postprocessing"):  # embedded by sed.export
                postprocessing = PostprocessingSettings.from_json(
                    metadata.extra["postprocessing"], f"{module.path}: metadata extra.postprocessing"
                )
        else:
            model = model or getattr(module, "preferred_model", "teacher")  # the network validation preferred
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = torch.device(device)
            self.module = module.eval().to(self.device)
            self.network = getattr(module, model)
            self.encoder = module.encoder
            self.exported = None
            metadata = DetectorMetadata.from_module(module, model)
        self.metadata = metadata
        self.model_name = model
        self.classes: list[str] = list(metadata.classes)
        self.sample_rate = metadata.sample_rate  # the rate the model takes (its input rate when it resamples)
        self.window_samples = metadata.window_samples  # the training clip length at that rate
        self.frame_samples = metadata.input_frame_samples  # input samples per output frame (a Fraction when resampling)
        self.frame_duration = metadata.frame_duration
        self.window_frames = metadata.window_frames
        if self.window_frames < 1:
            raise ValueError("the checkpoint's clip length gives no output frame")
        self.median_window: int | list[int] = (
            metadata.median_filter if median_window is None else check_median_window(median_window, self.classes)
        )
        self.thresholds: list[float] = list(metadata.thresholds)  # the model's evaluation thresholds
        self.default_threshold = float(metadata.thresholds[0])
        self.postprocessing: Optional[PostprocessingSettings] = None
        if postprocessing is not None:
            self.use_postprocessing(postprocessing, keep_median_window=median_window is not None)
        self.batch_size = int(batch_size)
        self.hop_frames = self._hop_frames(hop)
        self.grid = WindowGrid(self.window_samples, self.window_frames, self.frame_samples, self.hop_frames)

    def use_postprocessing(self, settings: PostprocessingSettings, keep_median_window: bool = False) -> None:
        """Post-process with ``settings`` (tuned on validation): their median windows (unless
        ``keep_median_window``) or SEBBs, and their class-wise thresholds as the default."""
        if settings.classes != self.classes:
            raise ValueError(
                f"post-processing settings are for classes {settings.classes}, the model has {self.classes}"
            )
        self.postprocessing = settings
        if settings.method == "median" and not keep_median_window:
            self.median_window = list(settings.median_window)

    @property
    def threshold(self) -> Threshold:
        """The default decision threshold(s): the tuned class-wise ones, else the first evaluation threshold."""
        if self.postprocessing is not None and self.postprocessing.thresholds is not None:
            return dict(self.postprocessing.thresholds)
        return self.default_threshold

    @property
    def uses_sebbs(self) -> bool:
        return self.postprocessing is not None and self.postprocessing.method == "sebbs"

    def describe_postprocessing(self) -> str:
        if self.uses_sebbs:
            return "SEBBs tuned on validation"
        return f"median window {self.median_window}"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        path: PathLike,
        model: Optional[str] = None,
        device: Optional[str] = None,
        hop: Optional[float] = None,
        batch_size: int = 8,
        median_window: int | Sequence[int] | None = None,
        postprocessing: PathLike | bool | None = None,
    ) -> "Detector":
        """Rebuild the model from a checkpoint written by ``train.py`` (its saved configuration).

        ``postprocessing``: a settings file (``<run>/postprocessing.json``); ``None`` uses the one ``train.py``
        saved beside the checkpoint when there is one (``<checkpoint stem>.postprocessing.json``); ``False`` none.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        from sed.training.module import SEDModule

        try:
            module = SEDModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
        except Exception as err:  # corrupt file, not a checkpoint of this project, …
            raise ValueError(f"{path}: cannot load checkpoint: {err}") from err
        settings = None
        if postprocessing is not False:
            found = settings_path_for(path) if postprocessing in (None, True) else Path(postprocessing)
            if postprocessing not in (None, True) or found.is_file():
                name = model or getattr(module, "preferred_model", "teacher")
                settings = load_settings(found, name, classes=module.classes)
                logger.info("post-processing tuned on validation from %s (%s)", found, describe(settings))
        return cls(
            module,
            model=model,
            device=device,
            hop=hop,
            batch_size=batch_size,
            median_window=median_window,
            postprocessing=settings,
        )

    @classmethod
    def from_exported(
        cls,
        path: PathLike,
        fmt: Optional[str] = None,
        model: Optional[str] = None,
        device: Optional[str] = None,
        hop: Optional[float] = None,
        batch_size: int = 8,
        median_window: int | Sequence[int] | None = None,
        postprocessing: PathLike | bool | None = None,
    ) -> "Detector":
        """A model written by ``python -m sed.export`` (``fmt``: ``"onnx"`` or ``"torchscript"``, default: what
        the file is); everything else comes from the metadata stored in it, the post-processing tuned on validation
        included (``postprocessing``: another settings file, or ``False`` for the plain ``evaluation`` settings)."""
        exported = ExportedModel.load(path, fmt=fmt, device=device)
        detector = cls(exported, model=model, hop=hop, batch_size=batch_size, median_window=median_window)
        if postprocessing is False and detector.postprocessing is not None:
            detector.postprocessing = None
            if median_window is None:
                detector.median_window = exported.metadata.median_filter
        elif postprocessing not in (None, True, False):
            detector.use_postprocessing(
                load_settings(postprocessing, detector.model_name, detector.classes),
                keep_median_window=median_window is not None,
            )
        return detector

    def _hop_frames(self, hop: Optional[float]) -> int:
        if hop is None:
            frames = max(self.window_frames // 2, 1)
        else:
            if not hop > 0:
                raise ValueError(f"hop must be > 0 seconds, got {hop}")
            frames = int(round(hop / self.frame_duration))
            if frames < 1 or frames > self.window_frames:
                raise ValueError(
                    f"hop {hop} s must lie between one output frame ({self.frame_duration:g} s) and the "
                    f"window covered by the model ({self.window_frames * self.frame_duration:g} s)"
                )
            if not math.isclose(frames * self.frame_duration, hop, rel_tol=1e-6):
                logger.info(
                    "hop %g s rounded to %d frames (%g s) to stay on the frame grid",
                    hop,
                    frames,
                    frames * self.frame_duration,
                )
        return frames

    @property
    def hop_seconds(self) -> float:
        """Seconds between the starts of two consecutive windows."""
        return self.hop_frames * self.frame_duration

    # ------------------------------------------------------------------ prediction
    def _mono(self, wav, sample_rate: int) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
        x = x.detach().to(torch.float32).cpu()
        if x.ndim == 2:
            # [channels, samples]; soundfile's [samples, channels] layout is recognised too.
            if x.shape[1] < x.shape[0] and x.shape[1] <= 16:
                x = x.T
            x = x.mean(dim=0)
        elif x.ndim != 1:
            raise ValueError(f"audio must be [samples] or [channels, samples], got shape {tuple(x.shape)}")
        return resample(x, int(sample_rate), self.sample_rate).contiguous()

    def window_starts(self, n_samples: int) -> np.ndarray:
        """Start sample of every window for a recording of ``n_samples`` (at the rate the model takes)."""
        return self.grid.starts(n_samples)

    @torch.no_grad()
    def predict(self, wav, sample_rate: int, postprocess: bool = True) -> Prediction:
        """Frame probabilities of a whole recording.

        Args:
            wav: ``[samples]`` or ``[channels, samples]`` (numpy or torch) at ``sample_rate``; soundfile's
                ``[samples, channels]`` is recognised too (at most 16 channels, more samples than channels).
                Channels are averaged.
            sample_rate: rate of ``wav``; resampled to the rate the model takes when different.
            postprocess: apply the checkpoint's median filter (after merging the windows).

        Returns:
            :class:`Prediction` ``(probabilities [C, T], timestamps [T + 1])``.
        """
        x = self._mono(wav, sample_rate)
        n = int(x.shape[0])
        windows = self.grid.windows(x)  # raises on empty audio
        parts = []
        for b in range(0, len(windows), self.batch_size):
            probs = self._strong(windows[b : b + self.batch_size])
            if probs.shape[-1] < self.window_frames:
                raise RuntimeError(
                    f"the model returned {probs.shape[-1]} frames per window, the label encoder expects "
                    f"{self.window_frames}"
                )
            parts.append(probs[..., : self.window_frames].float().cpu())
        keep = self.grid.n_frames(n)  # frames starting before the end of the audio
        merged = self.grid.merge(torch.cat(parts), keep).numpy()
        if postprocess and not self.uses_sebbs:
            merged = median_filter(merged, self.median_window)
        # The frame grid, the last frame cut at the end of the audio: what batch_to_scores gives the test outputs.
        timestamps = np.arange(keep + 1, dtype=np.float64) * self.frame_duration
        timestamps[-1] = min(timestamps[-1], n / self.sample_rate)
        return Prediction(merged, timestamps, boxes=postprocess and self.uses_sebbs)

    def _strong(self, windows: torch.Tensor) -> torch.Tensor:
        """Frame probabilities ``[B, C, >= window_frames]`` of windows ``[B, window_samples]``."""
        if self.exported is not None:
            return self.exported(windows)[0]
        from sed.models.encoders import model_inputs

        windows = windows.to(self.device)
        return self.network(self.module.features(windows), **model_inputs(self.network, windows)).strong

    def predict_file(self, path: PathLike, postprocess: bool = True, nonfinite: str = "error") -> Prediction:
        """:meth:`predict` on an audio file (any format soundfile reads); errors name the file.

        NaN/Inf samples raise :class:`AudioError` (``nonfinite="error"``) or are read as silence (``"zero"``).
        """
        data, rate = read_raw(path, nonfinite, option="--nonfinite zero")  # [channels, samples]
        try:
            return self.predict(data.mean(axis=0), rate, postprocess=postprocess)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    # ------------------------------------------------------------------ detection
    def scores(self, prediction: Prediction) -> pd.DataFrame:
        """A prediction as a sed_scores_eval score DataFrame (``onset, offset, *classes``); with SEBB
        post-processing, its bounding boxes (confidence over each box, -inf elsewhere)."""
        df = scores_dataframe(prediction.probabilities, prediction.timestamps, self.classes)
        if prediction.boxes:
            from sed.evaluation.bounding_boxes import sebb_scores

            df = sebb_scores(self.postprocessing.sebbs, {"clip": df})["clip"]
        return df

    def events(
        self,
        prediction: Prediction,
        filename: str = "audio.wav",
        threshold: Threshold | None = None,
    ) -> pd.DataFrame:
        """Events of a prediction: ``filename, onset, offset, event_label`` where the (median-filtered)
        probability is strictly above ``threshold`` (one value or ``{class: value}`` for every class; default
        :attr:`threshold`: the tuned class-wise thresholds, else the model's first evaluation threshold). Adjacent
        active frames make one event."""
        if threshold is None:
            threshold = self.threshold
        key = audio_id(filename)
        events = detections_from_scores({key: self.scores(prediction)}, threshold, filenames={key: filename})
        return events if len(events) else _empty_events()

    def detect(
        self,
        wav,
        sample_rate: int,
        threshold: Threshold | None = None,
        filename: str = "audio.wav",
    ) -> pd.DataFrame:
        """:meth:`predict` then :meth:`events` for one recording held in memory."""
        return self.events(self.predict(wav, sample_rate), filename, threshold)

    def detect_file(self, path: PathLike, threshold: Threshold | None = None) -> pd.DataFrame:
        """:meth:`detect` on an audio file; the ``filename`` column is its basename."""
        path = Path(path)
        return self.events(self.predict_file(path), path.name, threshold)

    def run(
        self,
        files: Sequence[tuple[str, Path]],
        output: Optional[PathLike] = None,
        threshold: Threshold | None = None,
        scores_dir: Optional[PathLike] = None,
        nonfinite: str = "error",
    ) -> RunResult:
        """Detect events in ``files`` (``(filename, path)`` pairs); write the event TSV to ``output`` and,
        with ``scores_dir``, one sed_scores_eval score file per recording (``<stem>.tsv``).

        A file that cannot be read or analysed (:class:`AudioError`, ``ValueError``: unreadable, missing,
        empty, non-finite samples under ``nonfinite="error"``) is skipped and reported in
        :attr:`RunResult.failed`; the outputs hold the other files. When no file could be processed,
        nothing is written. ``scores_dir`` is replaced as a whole at the end, so it never mixes two runs'
        clips; a folder holding files sed did not write is refused before any work
        (:class:`sed.evaluation.outputs.ScoresDirWriter`), as are outputs that would replace one of ``files`` or
        an audio file (:func:`sed.data.inputs.check_outputs`).
        """
        from sed.evaluation.outputs import ScoresDirWriter

        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        check_outputs([], files, output, scores_dir)  # an output replacing a recording or an audio file: refused
        threshold = self.threshold if threshold is None else threshold
        writer = ScoresDirWriter(scores_dir) if scores_dir is not None else None
        try:
            all_events, failed = [], []
            for i, (name, path) in enumerate(files, start=1):
                try:
                    prediction = self.predict_file(path, nonfinite=nonfinite)
                except (AudioError, ValueError) as err:  # the file's fault: report it, go on with the others
                    failed.append(" ".join(str(err).split()))
                    logger.info("[%d/%d] %s: failed", i, len(files), name)
                    continue
                events = self.events(prediction, name, threshold)
                all_events.append(events)
                logger.info("[%d/%d] %s: %d event(s)", i, len(files), name, len(events))
                if writer is not None:
                    writer.write(audio_id(name), self.scores(prediction))
            events = [e for e in all_events if len(e)]
            result = pd.concat(events, ignore_index=True) if events else _empty_events()
            if not all_events:  # nothing processed: keep whatever the outputs held
                if writer is not None:
                    writer.abort()
                return RunResult(result, failed)
            if output is not None:
                write_strong(result, output)
            if writer is not None:
                writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return RunResult(result, failed)


# ---------------------------------------------------------------------- command line
