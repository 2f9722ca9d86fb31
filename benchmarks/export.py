"""Exported-model inference speed: ONNX Runtime against PyTorch eager, on the CPU.

* candidate: the graph ``python -m sed.export`` writes (front-end + scaler + network, ``sed.export.serialize``),
  run by ONNX Runtime's CPU provider with as many intra-op threads as torch uses.
* reference: the same ``sed.inference.export.InferenceGraph`` in PyTorch eager mode under ``torch.inference_mode()``.
* models (random weights, built from the composed Hydra config like ``train.py`` does): the quick-start
  configuration (``model=crnn_small``, ``features=mel_small``) and the DESED-size CRNN (``model=crnn``,
  ``features=mel``), 10 classes, instance min-max scaler, 10-s windows at 16 kHz.
* batches of 1 and 16 windows; both runtimes timed interleaved (A B A B ...), medians reported as clips/s,
  with the ratio ONNX Runtime / PyTorch (> 1: ONNX Runtime faster) and the largest probability difference.

    python benchmarks/export.py
    python benchmarks/export.py --batch-sizes 1 16 64 --repeats 9 --threads 1
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import (
    ROOT,
    apply_threads,
    base_parser,
    interleaved,
    machine_line,
    median,
    note,
    result,
)

import sed  # noqa: F401,E402  (sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP, as every sed entry point does)

BENCH = "export"
CONFIGS = {
    "quickstart (crnn_small + mel_small)": ["model=crnn_small", "features=mel_small"],
    "DESED CRNN (crnn + mel)": ["model=crnn", "features=mel"],
}


def build_module(overrides: list[str], classes: list[str]):
    """An untrained SEDModule of ``conf/config.yaml`` composed with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sed.run.config  # noqa: F401  (registers the schema)
    from sed.training.module import SEDModule

    with initialize_config_dir(str(Path(ROOT, "conf").resolve()), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "paths.run_dir=unused"])
    return SEDModule(OmegaConf.to_container(cfg, resolve=True), classes).eval()


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="10-s windows per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each runtime per batch size")
    parser.add_argument("--only", choices=["quickstart", "desed"], default=None, help="one model configuration")
    args = parser.parse_args()
    apply_threads(args.threads)

    import torch

    from sed.inference.export import DetectorMetadata, ExportedModel, InferenceGraph, serialize

    print(machine_line("cpu"), flush=True)
    threads = torch.get_num_threads()
    classes = [f"class{i}" for i in range(10)]
    for name, overrides in CONFIGS.items():
        if args.only and not name.lower().startswith(args.only):
            continue
        torch.manual_seed(0)
        module = build_module(overrides, classes)
        n_params = sum(p.numel() for p in module.student.parameters())
        graph = InferenceGraph.from_module(module, "student")
        metadata = DetectorMetadata.from_module(module, "student")
        t0 = time.perf_counter()
        data = serialize(graph, metadata, "onnx")
        note(
            f"{name}: {n_params:,} parameters, exported in {time.perf_counter() - t0:.1f} s ({len(data) / 1e6:.1f} MB)"
        )
        onnx_model = ExportedModel.from_bytes(data, "onnx", f"<{name}>", threads=threads)
        gen = torch.Generator().manual_seed(1)
        for batch in args.batch_sizes:
            wav = torch.randn(batch, metadata.window_samples, generator=gen) * 0.1

            def pytorch(wav=wav):
                with torch.inference_mode():
                    return graph(wav)  # noqa: B023  (called in this iteration)

            def onnxruntime(wav=wav):
                return onnx_model(wav)  # noqa: B023

            diff = max(float((a - b).abs().max()) for a, b in zip(onnxruntime(), pytorch()))
            times = interleaved({"onnxruntime": onnxruntime, "pytorch": pytorch}, args.repeats, warmup=1)
            ort_rate = batch / median(times["onnxruntime"])
            pt_rate = batch / median(times["pytorch"])
            result(
                BENCH,
                f"{name}, batch {batch} x 10 s: ONNX Runtime {ort_rate:.2f} clips/s, PyTorch eager (inference_mode) "
                f"{pt_rate:.2f} clips/s; ratio {ort_rate / pt_rate:.2f}x; max |diff| {diff:.1e} "
                f"[median of {args.repeats} interleaved, {threads} thread(s)]",
            )


if __name__ == "__main__":
    main()
