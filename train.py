"""Train, resume or evaluate a sound event detector: ``python train.py [+exp=NAME] [key=value ...]``.

Configuration: conf/config.yaml and its groups (see README.md). Outputs: exp/<exp_name>/<timestamp>/.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import sed.config  # noqa: F401  (registers the typed schema and the run-directory resolvers)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from sed.app import log_failure, run
    from sed.checkpointing import RunStopped

    hydra_cfg = HydraConfig.get()
    hint = " ".join(["python train.py", *(o for o in hydra_cfg.overrides.task if not o.startswith("ckpt_path="))])
    try:
        results = run(cfg, hydra_cfg.runtime.output_dir, resume_hint=hint)
    except RunStopped:
        raise  # logged with the checkpoint to resume from
    except BaseException as err:
        log_failure(err)
        raise
    model = cfg.evaluation.obj_model
    # The value a Hydra sweeper optimises in multirun.
    return results.get(model, {}).get("psds1") if results else None


if __name__ == "__main__":
    main()
