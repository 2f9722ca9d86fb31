"""Train, resume or evaluate a sound event detector: ``python train.py [exp=NAME] [key=value ...]``.

Configuration: conf/config.yaml and its groups (see README.md). Outputs: exp/<exp_name>/<timestamp>/.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before any large import: the allocator is chosen when a process starts
    from sed.run.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()  # mimalloc where cmeel-mimalloc is installed, unless SED_ALLOCATOR=system

import logging
import os
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import sed.run.config  # noqa: F401  (registers the typed schema and the run-directory resolvers)

# conf/hydra/launcher/submitit_*.yaml share their names with hydra-submitit-launcher's schemas, so Hydra checks
# them against those (a misspelled key fails) and warns that this matching is deprecated: the files are complete
# launcher configs and work without it.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from sed.run.checkpointing import RunStopped
    from sed.run.job import log_failure, run
    from sed.utils.errors import UserError

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.train and not cfg.ckpt_path:
        from sed.run.rundir import requeued_checkpoint

        cfg.ckpt_path = requeued_checkpoint(hydra_cfg.runtime.output_dir)
        if cfg.ckpt_path:
            logging.getLogger(__name__).info("Requeued sweep job: resuming from %s", cfg.ckpt_path)
    hint = " ".join(["python train.py", *(o for o in hydra_cfg.overrides.task if not o.startswith("ckpt_path="))])
    try:
        results = run(cfg, hydra_cfg.runtime.output_dir, resume_hint=hint)
    except RunStopped:
        raise  # logged with the checkpoint to resume from
    except BaseException as err:
        if isinstance(err, UserError) and hydra_cfg.mode == RunMode.RUN and os.environ.get("HYDRA_FULL_ERROR") != "1":
            # Refused input: its reason is the last thing printed (stderr), exit status 1; the traceback goes to
            # train.log only (Hydra would print it after the reason, then its HYDRA_FULL_ERROR hint).
            log_failure(err, console=False)
            raise SystemExit(f"error: {err}") from None
        log_failure(err)
        raise
    del results  # test metrics are never returned: a sweep must not select on the test set
    return best_val_objective(hydra_cfg.runtime.output_dir, warn=hydra_cfg.mode == RunMode.MULTIRUN and cfg.train)


def best_val_objective(run_dir: str, warn: bool = False) -> float | None:
    """The value a Hydra sweeper optimises (``-m hparams_search=optuna``): the run's best validation objective,
    i.e. the best checkpoint's ``val/obj_metric`` (``evaluation.obj_metric``, higher is better) as recorded in
    its status.json. Never a test metric. None when nothing was validated (``train=false``, no monitored metric):
    Optuna then marks the trial failed rather than ranking it. (Extra processes of a distributed run, whose
    return value Hydra ignores, may get None too.)"""
    from sed.run.rundir import read_status

    status = read_status(run_dir)
    value = status.get("best_val_objective")
    if value is None and warn and status.get("status") == "finished":
        logging.getLogger(__name__).warning(
            "No validation objective in this run (nothing validated, or callbacks.checkpoint.monitor=null): "
            "a sweeper has nothing to optimise"
        )
    return value


if __name__ == "__main__":
    sed.run.config.accept_appended_exp(sys.argv)  # +exp=NAME, the form documented first, works as exp=NAME
    sed.run.config.check_override_syntax(sys.argv)  # a non-ASCII value unquoted: how to quote it
    main()
