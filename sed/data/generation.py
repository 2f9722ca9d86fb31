"""What ``data.generate=true`` does: sed.synth's embedded datasets generated into a dataset's root on first use.

A dataset with ``generate: clips`` (the DESED-like clips; the per-subset keys' dataset always) or ``generate:
recordings`` (the MAESTRO-like scene recordings) is generated into its root when that folder is new or empty, or
finished when an interrupted generation of the same settings left it; any other folder is refused, never written.
A refusal is explained in the configuration's keys.
"""

from __future__ import annotations

from typing import Mapping, Optional

from sed.data.sets import Dataset
from sed.utils.errors import ConfigError


def _advice(err: Exception, dataset: Dataset) -> str:
    """A refused generation in the configuration's terms: which keys to set."""
    single = dataset.key == "data"
    root_key = "data.root" if single else f"{dataset.key}.root"
    keys = {
        "seed": "data.generate_seed",
        "sizes": "data.generate_sizes" if single else f"{dataset.key}.generate_sizes",
        "clip_duration": "data.clip_duration",
        "sample_rate": "data.sample_rate",
    }
    differences = getattr(err, "differences", {})
    if not differences:
        return (
            f"data.generate=true would write the synthetic dataset into {root_key}={err.root}, which already holds "
            "files the generator did not write; nothing was changed. To train on that data set data.generate=false "
            "(and its paths, e.g. data=desed for a prepared DESED copy); to generate the embedded data, point "
            f"{root_key} at a new or empty folder."
        )
    listed = "; ".join(
        f"{keys.get(k, f'generator {k}')}: {found!r} there, {wanted!r} in this run"
        for k, (found, wanted) in differences.items()
    )
    return (
        f"{root_key}={err.root} holds the synthetic dataset generated with other settings ({listed}); it is not "
        f"regenerated in place. Use it with its own settings, or point {root_key} at a new folder to generate one "
        "with this run's settings."
    )


def generate(
    dataset: Dataset, seed: int, clip_duration: float, sample_rate: int, sizes: Optional[Mapping[str, int]] = None
) -> None:
    """Generate ``dataset`` into its root as its ``generate`` says (nothing when it says nothing); ``sizes``: the
    clips' default sizes (``data.generate_sizes``, splits strong/weak/...), a dataset's own ``generate_sizes`` come
    first. The recordings have other splits (train/validation/test): only their own sizes apply to them."""
    import sed.synth
    from sed.synth import GenerationRefused

    own = dict(dataset.generate_sizes) or None
    try:
        if dataset.generate == "clips":
            sizes = own or (dict(sizes) if sizes else None)
            sed.synth.generate_dataset(
                dataset.root, seed=seed, clip_duration=clip_duration, sample_rate=sample_rate, sizes=sizes
            )
        elif dataset.generate == "recordings":
            sed.synth.generate_recordings(dataset.root, seed=seed, sample_rate=sample_rate, sizes=own)
    except GenerationRefused as err:
        raise ConfigError(_advice(err, dataset)) from None
