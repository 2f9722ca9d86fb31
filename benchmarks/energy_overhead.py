"""Cost of energy measuring (codecarbon, sed.dcase.energy) and MAC counting (sed.dcase.complexity) on a whole run.

Runs ``python train.py`` on a tiny generated dataset (2-s clips, a few thousand-parameter CRNN: the worst case,
where fixed costs weigh most) with ``energy.enabled=true`` and ``false``, interleaved, and reports the median
wall time of each and their ratio. The reference is the run without energy measuring. The MAC count of the DESED
model (conf/model/crnn.yaml, conf/features/mel.yaml) is timed beside it, as it is paid once per run.

    python benchmarks/energy_overhead.py [--repeats 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, interleaved, machine_line, median, result

sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY_CLIP, TINY_SIZES, tiny_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    print(machine_line())
    from sed.synth import generate_dataset

    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        generate_dataset(data, seed=3, clip_duration=TINY_CLIP, sizes=TINY_SIZES, workers=1)

        def run(enabled: bool):
            def call() -> None:
                overrides = tiny_overrides(data, Path(work) / f"exp_{enabled}", args.epochs)
                subprocess.run(
                    [sys.executable, str(ROOT / "train.py"), *overrides, f"energy.enabled={str(enabled).lower()}"],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )

            return call

        times = interleaved({"on": run(True), "off": run(False)}, repeats=args.repeats, warmup=0)
    on, off = median(times["on"]), median(times["off"])
    result(
        "energy_overhead",
        f"tiny train.py run ({args.epochs} epochs + test), energy on {on:.1f} s vs off {off:.1f} s "
        f"(median of {args.repeats}): +{on - off:.1f} s, ratio {on / off:.2f}x",
    )

    from sed.dcase.complexity import deployed_complexity
    from sed.features.frontend import FrontEnd
    from sed.features.scaler import TorchScaler
    from sed.models.crnn import CRNN

    t0 = time.perf_counter()
    block = deployed_complexity(FrontEnd(), TorchScaler("instance", "minmax", [1, 2]), CRNN(10), 160_000, 16_000)
    result(
        "mac_count",
        f"DESED CRNN + log-mel, one 10-s clip: {block['macs']:,} MACs counted in "
        f"{time.perf_counter() - t0:.2f} s (once per run)",
    )


if __name__ == "__main__":
    main()
