import logging

import pytest
import torch

from sed.data.checks import DataCheckError
from sed.data.datamodule import SEDDataModule
from sed.data.encoder import LabelEncoder

SIZES = {"strong": 6, "weak": 4, "unlabeled": 6, "validation": 3, "test": 3}


def _dm(root, **kwargs) -> SEDDataModule:
    args = dict(
        root=str(root),
        generate=True,
        generate_sizes=SIZES,
        clip_duration=1.0,
        batch_sizes=[2, 2, 2],
        eval_batch_size=4,
        num_workers=0,
    )
    args.update(kwargs)
    return SEDDataModule(**args)


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generates_embedded_data_once_and_refuses_other_settings(tmp_path):
    root = tmp_path / "embedded"
    _dm(root).prepare_data()
    assert (root / ".complete").is_file()
    before = _snapshot(root)
    _dm(root).prepare_data()
    assert _snapshot(root) == before  # complete and matching: left alone
    with pytest.raises(
        ValueError,
        match=r"data.root=.*embedded holds the synthetic dataset generated with other "
        r"settings \(data.clip_duration: 1.0 there, 1.5 in this run\)",
    ):
        _dm(root, clip_duration=1.5).prepare_data()
    with pytest.raises(ValueError, match=r"data.generate_sizes: .* there"):
        _dm(root, generate_sizes={**SIZES, "strong": 7}).prepare_data()
    assert _snapshot(root) == before


def test_generation_never_touches_a_users_dataset(tmp_path, tiny_dataset):
    """`python train.py data.root=/my/data` with the embedded default's data.generate=true: refused, untouched."""
    import shutil

    user = tmp_path / "my_data"
    shutil.copytree(tiny_dataset, user)
    for marker in (".complete", ".generating"):
        (user / marker).unlink(missing_ok=True)
    (user / "README.txt").write_text("my own dataset")
    before = _snapshot(user)
    with pytest.raises(
        ValueError, match=r"data.root=.*my_data.*files the generator did not write.*data.generate=false"
    ):
        _dm(user).prepare_data()
    assert _snapshot(user) == before


def test_mixed_batches_and_eval_sets(tmp_path):
    dm = _dm(tmp_path / "d")
    dm.prepare_data()
    encoder = LabelEncoder(dm.classes, sample_rate=16000, hop_length=256, clip_duration=1.0, time_pooling=4)
    dm.set_encoder(encoder)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (6, 16000)
    assert batch["has_strong"].tolist() == [True, True, False, False, False, False]
    assert batch["has_weak"].tolist() == [False, False, True, True, False, False]
    assert batch["strong"].shape == (6, len(dm.classes), encoder.n_frames)
    assert torch.all(batch["strong"][2:] == 0)
    val = next(iter(dm.val_dataloader()))
    assert len(val["filename"]) == 3 and set(dm.durations["val"]) >= set(val["filename"])
    assert len(dm.scaler_fit_dataloader().dataset) == 16


def test_missing_classes_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        _ = SEDDataModule(root=str(tmp_path)).classes
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere does not exist"):
        _ = SEDDataModule(root=str(tmp_path / "nowhere")).classes


def _prepared(tmp_path, **kwargs) -> SEDDataModule:
    dm = _dm(tmp_path / "d", **kwargs)
    dm.prepare_data()
    dm.set_encoder(LabelEncoder(dm.classes, sample_rate=16000, hop_length=256, clip_duration=1.0, time_pooling=4))
    return dm


def test_fit_refuses_bad_audio_of_every_set_at_once_before_training(tmp_path):
    """An empty unlabeled file failed only if the sampler drew it, and a truncated validation file read as
    silence with labels; now fitting stops before it starts, naming both."""
    dm = _prepared(tmp_path)
    unlabeled = sorted((dm.root / "audio" / "train" / "unlabeled").glob("*.wav"))[-1]
    unlabeled.write_bytes(b"")
    val = sorted((dm.root / "audio" / "validation").glob("*.wav"))[0]
    val.write_bytes(val.read_bytes()[:1000])
    with pytest.raises(DataCheckError) as excinfo:
        dm.setup("fit")
    assert len(excinfo.value.problems) == 2
    msg = str(excinfo.value)
    assert f"{unlabeled}: empty file" in msg and f"{val}: truncated" in msg
    assert msg.count(str(dm.root / "metadata")) == 2  # each names its annotation file and line
    assert not dm.train_sets and not dm.eval_datasets


@pytest.mark.parametrize("broken", ["empty test.tsv", "missing test audio"])
def test_fit_checks_the_test_set_when_the_run_will_test(tmp_path, broken):
    dm = _prepared(tmp_path, check_test=True)
    test_tsv = dm.root / "metadata" / "test" / "test.tsv"
    if broken == "empty test.tsv":
        test_tsv.write_text("")
        expected = f"{test_tsv}:1: empty file"
    else:
        gone = sorted((dm.root / "audio" / "test").glob("*.wav"))[0]
        gone.unlink()
        expected = f"audio file {gone}: listed but not found"
    with pytest.raises(DataCheckError, match=expected):
        dm.setup("fit")
    assert not dm.train_sets

    quiet = _prepared(tmp_path, check_test=False)  # a run that will not test does not need a test set
    quiet.setup("fit")
    assert quiet.train_sets and "test" not in quiet.eval_datasets


def test_check_test_follows_whether_the_run_tests():
    from omegaconf import OmegaConf

    from sed.run.config import Config

    cfg = OmegaConf.structured(Config)
    assert cfg.data.check_test is True
    cfg.test = False
    assert cfg.data.check_test is False


def test_events_past_the_audio_are_clipped_in_what_trains_and_what_is_scored(tmp_path, caplog):
    """A label past the end of a short clip used to mark its zero padding as the event."""
    import numpy as np
    import soundfile as sf

    dm = _prepared(tmp_path)
    strong_tsv = dm.root / "metadata" / "train" / "strong.tsv"
    val_tsv = dm.root / "metadata" / "validation" / "validation.tsv"
    short = sorted((dm.root / "audio" / "train" / "strong").glob("*.wav"))[0]
    sf.write(short, np.zeros(8000, dtype=np.float32), 16000)  # 0.5 s
    val_name = val_tsv.read_text().splitlines()[1].split("\t")[0]
    strong_tsv.write_text(f"filename\tonset\toffset\tevent_label\n{short.name}\t0.25\t0.9\t{dm.classes[0]}\n")
    with val_tsv.open("a") as f:
        f.write(f"{val_name}\t0.5\t7.5\t{dm.classes[0]}\n")
    with caplog.at_level(logging.WARNING, logger="sed.data.checks"):
        dm.setup("fit")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and warned[0].startswith(f"{strong_tsv}: 1 event(s)") and "line 2" in warned[0]
    assert dm.ground_truth["val"]["offset"].max() <= 1.0
    labels = dm.train_sets["strong"][0]["strong"][0]  # class 0 over the 1 s window; the audio ends at 0.5 s
    active = labels.nonzero().flatten() / len(labels)
    assert labels.any() and active.max() < 0.5


def test_clips_with_a_duration_but_no_ground_truth_row_are_a_warning(tmp_path, caplog):
    """DCASE ground truth lists a clip without events as an empty row: a clip in durations.tsv and on disk but not
    in the ground truth is not evaluated, and the user is told how many."""
    import logging

    import numpy as np
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / "audio" / name, np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "test.tsv").write_text("filename\tonset\toffset\tevent_label\na.wav\t0.1\t0.5\tdog\n")
    (tmp_path / "durations.tsv").write_text("filename\tduration\na.wav\t1\nb.wav\t1\nc.wav\t1\ngone.wav\t1\n")
    dm = SEDDataModule(
        root=str(tmp_path),
        classes=["dog"],
        clip_duration=1.0,
        test_tsv="test.tsv",
        test_audio="audio",
        test_durations="durations.tsv",
        num_workers=0,
    )
    dm.set_encoder(LabelEncoder(["dog"], sample_rate=16000, hop_length=256, clip_duration=1.0, time_pooling=4))
    with caplog.at_level(logging.WARNING, logger="sed.data.checks"):
        dm.setup("test")
    assert dm.eval_datasets["test"].filenames == ["a.wav"]
    assert "2 clip(s) of" in caplog.text and "b.wav" in caplog.text and "not evaluated" in caplog.text, caplog.text


def test_weak_validation_split_is_deterministic_and_disjoint(tiny_dataset, tmp_path):
    """data.weak_val_fraction holds out weak clips (drawn from the seed) as a second validation loader."""

    def build(seed):
        dm = SEDDataModule(
            root=str(tiny_dataset),
            clip_duration=2.0,
            batch_sizes=[2, 2, 2],
            num_workers=0,
            weak_val_fraction=0.25,
            seed=seed,
        )
        dm.set_encoder(LabelEncoder(dm.classes, sample_rate=16000, hop_length=256, clip_duration=2.0, time_pooling=4))
        dm.setup("fit")
        return dm

    dm = build(1)
    train, held = dm.train_sets["weak"].filenames, dm.eval_datasets["val_weak"].filenames
    assert len(held) == 2 and len(train) == 6 and not set(train) & set(held)
    assert build(1).eval_datasets["val_weak"].filenames == held
    assert any(build(s).eval_datasets["val_weak"].filenames != held for s in (2, 3, 4))
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    assert next(iter(loaders[1]))["has_weak"].all()
    with pytest.raises(ValueError, match="weak_val_fraction"):
        SEDDataModule(root=str(tiny_dataset), weak_val_fraction=1.0)


def test_input_sample_rate_auto_is_the_files_common_rate(tmp_path, caplog):
    """features.input_sample_rate=auto: the files' rate when all share one other than the model's, else None."""
    import logging

    import numpy as np
    import soundfile as sf

    def dataset(rates: list[int]) -> SEDDataModule:
        root = tmp_path / "_".join(map(str, rates))
        for i, rate in enumerate(rates):
            folder = root / ("audio/train/strong" if i % 2 else "audio/validation")
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"c{i}.wav", np.zeros(rate // 10, dtype=np.float32), rate)
        (root / "audio/validation/notes.txt").write_text("not audio")  # ignored: the checks of setup report it
        return SEDDataModule(str(root), classes=["a"], weak_tsv=None, unlabeled_tsv=None)

    caplog.set_level(logging.INFO, logger="sed.data.checks")
    assert dataset([44100, 44100, 44100]).resolve_input_sample_rate("auto", 16000) == 44100
    assert "all 3 audio files are at 44100 Hz" in caplog.text
    assert dataset([44100, 48000]).resolve_input_sample_rate("auto", 16000) is None  # mixed: the loader resamples
    assert "1 at 44100 Hz, 1 at 48000 Hz; the loader resamples to 16000 Hz" in caplog.text
    assert dataset([16000, 16000]).resolve_input_sample_rate("auto", 16000) is None
    dm = dataset([22050])
    assert dm.resolve_input_sample_rate(44100, 16000) == 44100 and dm.resolve_input_sample_rate(None, 16000) is None
    assert dm.resolve_input_sample_rate(16000, 16000) is None  # the model's own rate: no resampling layer


class _Recorder:
    """What a training run fed its steps: per step, the clips and a fingerprint of their audio (the random crops)."""

    @staticmethod
    def module(steps: list):
        import pytorch_lightning as pl

        class Recording(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, batch_idx):
                steps.append((self.current_epoch, list(batch["filename"]), batch["audio"].sum(-1).tolist()))
                return (self.w * batch["audio"].mean()).sum() + self.w**2

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Recording()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_epoch_trains_its_own_order_and_a_resumed_epoch_its_remaining_batches(
    tiny_dataset, tmp_path, num_workers
):
    """A run resumed from a checkpoint written mid-epoch (epoch 1 here, not only epoch 0) trains exactly the batches
    the uninterrupted run trained after that point: the same clips, in the same order, with the same random crops
    (2-s files, 1-s clips), whatever the number of loader workers. Lightning's Trainer drives the loaders, as in
    train.py (it calls set_epoch on a batch sampler's ``sampler`` only, and creates an epoch's iterator before or
    after that depending on how the epoch starts)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    class SaveAt(Callback):
        def __init__(self, steps: list[int]):
            self.steps = steps

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step in self.steps:
                trainer.save_checkpoint(tmp_path / f"step{trainer.global_step}.ckpt")

    def fit(steps: list, callbacks=(), ckpt_path=None):
        dm = SEDDataModule(
            root=str(tiny_dataset),
            clip_duration=1.0,
            batch_sizes=[4, 2, 4],
            num_workers=num_workers,
            epoch_length=4,
            seed=5,
        )
        dm.set_encoder(LabelEncoder(dm.classes, sample_rate=16000, hop_length=256, clip_duration=1.0, time_pooling=4))
        trainer = pl.Trainer(
            max_epochs=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=list(callbacks),
        )
        trainer.fit(_Recorder.module(steps), datamodule=dm, ckpt_path=ckpt_path)

    reference: list = []
    # 4 batches per epoch: mid-epoch 1, the last batch of epoch 0 (its end), mid-epoch 2
    saved = [6, 4, 9]
    fit(reference, [SaveAt(saved)])
    assert len(reference) == 12
    orders = [[files for epoch, files, _ in reference if epoch == e] for e in range(3)]
    assert orders[0] != orders[1] != orders[2] != orders[0], "every epoch draws its own order"
    for step in saved:
        resumed: list = []
        fit(resumed, ckpt_path=tmp_path / f"step{step}.ckpt")
        assert resumed == reference[step:], f"resumed after step {step}"


def test_clips_shared_by_training_and_evaluation_sets_are_a_warning_with_counts(tiny_dataset, tmp_path, caplog):
    """A test clip copied into the weak training set under another name, and a weak clip listed in the strong set
    too: accepted (the data may be meant so), with a warning each naming the sets and the count."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    test_clip = sorted((root / "audio" / "test").glob("*.wav"))[0]
    shutil.copy(test_clip, root / "audio" / "train" / "weak" / "renamed.wav")
    with open(root / "metadata" / "train" / "weak.tsv", "a") as f:
        f.write("renamed.wav\t\n")
    weak_clip = sorted((root / "audio" / "train" / "weak").glob("weak_*.wav"))[0]
    shutil.copy(weak_clip, root / "audio" / "train" / "strong" / weak_clip.name)
    with open(root / "metadata" / "train" / "strong.tsv", "a") as f:
        f.write(f"{weak_clip.name}\t\t\t\n")
    dm = SEDDataModule(root=str(root), clip_duration=2.0, batch_sizes=[2, 2, 2], num_workers=0, check_test=True)
    dm.set_encoder(LabelEncoder(dm.classes, sample_rate=16000, hop_length=256, clip_duration=2.0, time_pooling=4))
    caplog.set_level(logging.WARNING, logger="sed.data.leakage")
    dm.setup("fit")
    assert "1 clip(s) of the test set are also in the weak set (the same file or the same audio)" in caplog.text
    assert f"{test_clip.name} = renamed.wav" in caplog.text
    assert "1 clip(s) of the weak set are also in the strong set" in caplog.text


# ------------------------------------------------------------------ several datasets
from sed.synth import DEFAULT_CLASSES, RECORDING_CLASSES  # noqa: E402


def _recordings(root):
    from sed.synth import generate_recordings

    return generate_recordings(root, seed=2, sizes={"train": 1, "validation": 1, "test": 1}, duration=12.0)


def _two_datasets(clips, recordings, **change) -> dict:
    split = lambda s: {
        "tsv": f"metadata/{s}/{s}.tsv",
        "audio": f"audio/{s}",
        "durations": f"metadata/{s}/durations.tsv",
    }  # noqa: E731
    return {
        "clips": {
            "root": str(clips),
            "classes": DEFAULT_CLASSES,
            "train": {
                "strong": {
                    "kind": "strong",
                    "tsv": "metadata/train/strong.tsv",
                    "audio": "audio/train/strong",
                    "batch_size": 2,
                },
                "weak": {
                    "kind": "weak",
                    "tsv": "metadata/train/weak.tsv",
                    "audio": "audio/train/weak",
                    "batch_size": 2,
                },
            },
            "validation": {
                "tsv": "metadata/validation/validation.tsv",
                "audio": "audio/validation",
                "durations": "metadata/validation/durations.tsv",
            },
        },
        "recordings": {
            "root": str(recordings),
            "classes": ["people_talking", "footsteps", "car_passing"],
            "aliases": {
                "people_talking": "speech_like",
                "birds_singing": "chirp",
                "announcement": ["speech_like"],
                "dishes": [],
                "door_knock": [],
            },
            "train": {
                "train": {
                    "tsv": "metadata/train/train.tsv",
                    "audio": "audio/train",
                    "batch_size": 3,
                    "window_hop": 1.0,
                    "consistency": False,
                }
            },
            "validation": {**split("validation"), "metrics": "mpauc"},
            **change,
        },
    }


def test_two_datasets_batches_carry_their_dataset_mask_group_and_soft_aliased_targets(tmp_path, tiny_dataset, caplog):
    recordings = _recordings(tmp_path / "rec")
    with pytest.raises(Exception, match="an alias maps a label to a class name or a list"):
        _ = SEDDataModule(str(tmp_path), datasets=_two_datasets(tiny_dataset, recordings), num_workers=0).classes
    datasets = _two_datasets(
        tiny_dataset,
        recordings,
        aliases={
            "people_talking": "speech_like",
            "birds_singing": "chirp",
            "announcement": "speech_like",
            "dishes": "car_passing",
            "door_knock": "car_passing",
        },
    )
    dm = SEDDataModule(str(tmp_path), datasets=datasets, clip_duration=2.0, eval_batch_size=4, num_workers=0)
    with caplog.at_level(logging.INFO, logger="sed.data.datamodule"):
        classes = dm.classes
    assert classes == DEFAULT_CLASSES + ["people_talking", "car_passing"]
    assert "  footsteps: clips, recordings" in caplog.text
    assert "  speech_like: clips, recordings ('people_talking', 'announcement')" in caplog.text
    dm.set_encoder(LabelEncoder(classes, sample_rate=16000, hop_length=256, clip_duration=2.0, time_pooling=4))
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.train_sets.items()} == {
        "clips/strong": 16,
        "clips/weak": 8,
        "recordings/train": 11,
    }  # 12-s recording: 11 windows
    annotated = ["chirp", "speech_like", "footsteps", "people_talking", "car_passing"]  # in the model's order
    assert dm.val_loader_sets == ["val/clips", "val/recordings"] and dm.scored_classes("val/recordings") == annotated
    batch = next(iter(dm.train_dataloader()))
    clips_mask, rec_mask = [True] * 10 + [False] * 2, [c in annotated for c in classes]
    assert batch["class_mask"].tolist() == [clips_mask] * 4 + [rec_mask] * 3
    assert batch["mix_group"].tolist() == [0, 0, 1, 1, 2, 2, 2]  # clips strong, clips weak, recordings strong
    assert batch["consistency"].tolist() == [True] * 4 + [False] * 3
    # The recording's events (seed 2): birds_singing 3.05-4.2 s at confidence 0.8, car_passing 7.6-12 s at 1.
    windows = dm.train_sets["recordings/train"]
    peak = torch.stack([windows[i]["strong"].amax(-1) for i in range(len(windows))]).amax(0)
    assert peak[classes.index("chirp")] == pytest.approx(0.8)  # birds_singing, renamed by its alias, soft
    assert peak[classes.index("car_passing")] == 1.0 and peak[classes.index("people_talking")] == 0
    fractions = dm.strong_active_fractions()
    assert fractions[classes.index("car_passing")] > 0 and fractions[classes.index("chirp")] > 0


def test_several_datasets_refuse_tuning_on_validation(tmp_path, tiny_dataset):
    recordings = _recordings(tmp_path / "rec")
    datasets = _two_datasets(tiny_dataset, recordings, aliases={})
    datasets["recordings"]["classes"] = list(RECORDING_CLASSES)
    dm = SEDDataModule(str(tmp_path), datasets=datasets, clip_duration=2.0, num_workers=0)
    with pytest.raises(ValueError, match="evaluation.tune_postprocessing.*take one dataset"):
        dm.validate_at_test = True
