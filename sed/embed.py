"""Extract a frozen encoder's embeddings to its disk cache ahead of training: ``python -m sed.embed [OPTIONS]
[train.py overrides]``.

The overrides are train.py's (``exp=beats_crnn data.root=... model.encoder.path=...``): the same configuration
gives the same encoder identity and the same clips, so the runs that follow (any seed) read every embedding from
``model.encoder.cache_dir`` instead of computing it in their first epoch. Every clip of every set is embedded as
the training module sees it: a training clip as its (fixed) crop, an evaluation clip as the windows it is
evaluated in; training clips that differ per epoch (random crops of longer files, random channels) are counted
and left to the runs, which compute them on the fly. Entries already there are kept (an interrupted extraction
resumes where it stopped).

Options: ``--device cuda|cpu`` (default: cuda when there is one), ``--batch-size N`` (default: the evaluation
batch size).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

log = logging.getLogger("sed.embed")
CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str]) -> Any:
    """train.py's configuration for ``overrides``, checked against the schema."""
    from hydra import compose, initialize_config_dir

    import sed.run.config as config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [o[1:] if o.startswith("+exp=") else o for o in overrides]  # as train.py
        if not any(o.startswith("paths.run_dir=") for o in overrides):  # no run here: nothing is written there
            overrides.append(f"paths.run_dir={tempfile.gettempdir()}")
        cfg = compose("config", overrides=overrides)
    config.check_known_keys(cfg)
    return cfg


def extract(cfg: Any, device: str = "cpu", batch_size: Optional[int] = None) -> dict[str, int]:
    """Fill the disk cache of ``cfg``'s encoder with the embeddings of every set's clips; the counts
    (``computed``, ``disk``: already there, ``varying``: left to the runs, ``clips``, ``seconds``)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sed.data.datamodule import SEDDataModule
    from sed.data.datasets import collate
    from sed.models.encoders import audio_encoder
    from sed.training.module import SEDModule

    pl.seed_everything(cfg.seed, workers=True)  # as train.py: a random encoder (config=...) gets the run's weights
    dm: SEDDataModule = instantiate(cfg.data, seed=cfg.seed, _convert_="all")
    dm.prepare_data()
    config = OmegaConf.to_container(cfg, resolve=True)
    config["features"]["input_sample_rate"] = dm.resolve_input_sample_rate(
        config["features"].get("input_sample_rate"), config["features"]["sample_rate"]
    )
    module = SEDModule(config, dm.classes).eval()
    enc = audio_encoder(module.student)
    if enc is None:
        raise ValueError(
            f"model._target_={cfg.model.get('_target_')}: this model has no pretrained audio encoder "
            "(model.encoder) whose embeddings could be extracted"
        )
    if enc.cache_dir is None:
        raise ValueError("model.encoder.cache_dir is null: give the folder to keep the embeddings in")
    if not enc.frozen:
        raise ValueError(
            "model.encoder.frozen=false: a fine-tuned encoder's embeddings change at every step and are never cached"
        )
    enc.to(device)
    dm.set_encoder(module.encoder, module.frontend.input_sample_rate)
    dm.setup("fit")
    dm.setup("test")
    size = int(batch_size or dm.eval_batch_size)
    grid = module.window_grid
    start, clips, seconds = time.perf_counter(), 0, 0.0
    sets = {**{f"train/{k}": v for k, v in dm.train_sets.items()}, **dm.eval_datasets}
    with torch.inference_mode():
        for name, dataset in sets.items():
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=size, collate_fn=collate, num_workers=dm.num_workers
            )
            for batch in loader:
                audio = batch["audio"].to(device)
                if "length" in batch:  # an evaluation clip: the windows it is evaluated in
                    views = [
                        grid.windows(audio[i, : max(int(n), grid.window_samples)])
                        for i, n in enumerate(batch["length"].tolist())
                    ]
                    audio = torch.cat(views)
                    cacheable = None
                else:
                    cacheable = (~batch["varies"]).tolist()
                for a in range(0, audio.shape[0], size):
                    enc.embed(
                        audio[a : a + size],
                        cache=True,
                        cacheable=None if cacheable is None else cacheable[a : a + size],
                    )
                clips += len(batch["filename"])
                seconds += audio.shape[0] * audio.shape[-1] / dm.loader_sample_rate
            log.info(
                "%s: %d clips (%d computed, %d already there, %d vary per epoch)",
                name,
                len(dataset),
                enc.counts["computed"],
                enc.counts["disk"],
                enc.counts["varying"],
            )
    counts = {k: int(enc.counts[k]) for k in ("computed", "disk", "varying")}
    store = enc.store()
    log.info(
        "%d clips (%.1f h of audio, as encoded) in %.0f s: %d embeddings computed, %d already in %s; %d training "
        "clip(s) vary per epoch and are computed by the runs; the cache holds %d entries (%.1f MiB) for "
        "encoder %s",
        clips,
        seconds / 3600,
        time.perf_counter() - start,
        counts["computed"],
        counts["disk"],
        enc.cache_dir,
        counts["varying"],
        len(store),
        store.size_bytes() / 2**20,
        enc.identity,
    )
    return {**counts, "clips": clips, "seconds": int(seconds)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sed.embed",
        description=__doc__.split("\n\n")[0],
        epilog="Any other argument is a train.py override (key=value).",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option(s) {bad}")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        extract(compose_config(overrides), args.device, args.batch_size)
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
