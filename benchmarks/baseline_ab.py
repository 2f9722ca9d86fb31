"""Same-run A/B of this project's training loop against the DCASE Task 4 baseline's own code (DESED_task).

Both systems train the DESED CRNN recipe (mean teacher, batch 12/12/24, 1.1 M parameters, 128 mels, 10-s clips
at 16 kHz) for one epoch on the same generated dataset, with the same number of DataLoader workers, one run after
the other, alternating which goes first (A B, B A, ...: ``--pairs`` pairs), each in a fresh process:

- **baseline**: ``recipes/dcase2023_task4_baseline/train_sed.py --gpus 0`` of the user's DESED_task checkout, run by
  the baseline's own Python (``--baseline-python``), from a scratch copy made here (the checkout is only read).
  The copy is changed only where it must be: its YAML points at the generated wav/tsv files and sets
  ``n_epochs``, ``num_workers``, ``batch_size``, ``backend: null`` (single process on the CPU), ``net.nclass``;
  ``local/classes_dict.py`` lists the generated classes; and ``desed_task/dataio/datasets.py`` reads audio with
  soundfile instead of ``torchaudio.load`` (torchaudio >= 2.9 decodes through torchcodec, which needs FFmpeg's
  shared libraries; the 2023 recipe's environment read WAVs through torchaudio's soundfile backend, which is what
  the replacement does: float32, [channels, samples]). ``--baseline-torchaudio-load`` keeps ``torchaudio.load``.
- **ours**: ``python train.py +exp=desed_crnn data.root=... data.generate=false`` with the same classes, batch
  sizes, workers and one epoch, and ``+callbacks.tqdm_bar._target_=pytorch_lightning.callbacks.TQDMProgressBar``
  (Lightning 2 uses rich's bar when rich is installed, which prints nothing per step into a pipe).

Everything is measured from the outside, the same way for both, from the timestamps at which the Lightning TQDM
progress bar lines (both print them; the child's output is read unbuffered and each ``\\r``/``\\n``-separated
fragment stamped on arrival) and from memory samples of the process tree:

- **train clips/s**: ``(n_last - n_first) * 48 / (t(n_last) - t(n_first))`` where ``n`` is the step counter of
  the ``Epoch E: ... n/total`` bar and ``t(n)`` the moment step ``n`` was first shown (Lightning redraws the bar
  at the end of every step). The first step is excluded (it pays worker start-up and the first batch), as are
  start-up, data generation, validation and the test stage.
- **validation seconds**: from the first ``Validation`` bar line to the first ``Epoch`` line whose postfix
  metrics changed (Lightning's ``on_validation_end`` writes the new ``val/obj_metric``, before checkpoints are
  saved), so it includes the validation epoch-end scoring of each system (the baseline's psds_eval/sed_eval,
  our sed_scores_eval/sed_eval) and excludes the checkpoint write.
- Each run is stopped (SIGTERM to its process group) as soon as its ``Testing`` bar appears: the test stage
  is not measured (on the machine of benchmarks/README.md the baseline's test stage also hung, every thread in
  a futex wait, after its devtest codecarbon tracker was created).
- **peak memory**: the largest sample (every 0.1 s) of the main process's RSS plus each descendant's private
  memory (DataLoader workers; ``_common.tree_rss_mib``), from start until the test stage begins.

Torch threads are left at each system's default. This project sets ``OMP_WAIT_POLICY=PASSIVE`` at import (on a
shared CPU libgomp's spin-waiting makes the CRNN step many times slower; see ``experiments/cpu_threads.py``); the baseline
gets the same variable in its environment so that the loops are compared, not libgomp's waiting policy
(``--baseline-omp-default`` runs it without). It also makes PyTorch put large CPU tensors in transparent huge
pages (``THP_MEM_ALLOC_ENABLE=1``): the baseline runs as shipped, without it, unless ``--baseline-thp`` (which
separates what the environment gives from what the code does).

    python benchmarks/baseline_ab.py --baseline-dir ~/DESED_task --baseline-python ~/dcase-venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import ROOT, machine_line, median, note, result, tree_rss_mib

RECIPE = Path("recipes") / "dcase2023_task4_baseline"
# Lightning 2 picks RichProgressBar when rich is installed, which draws nothing per step when its output is not
# a terminal; ours is given Lightning's TQDM bar, which is what the baseline's Lightning 1.9 uses.
TQDM_BAR = "pytorch_lightning.callbacks.TQDMProgressBar"
BAR_TRAIN = re.compile(r"^Epoch (\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
BAR_VAL = re.compile(r"^Validation")
BAR_TEST = re.compile(r"^Testing")
METRIC = re.compile(r"([\w/@.\-]+)=([^,\]]+)")


# --------------------------------------------------------------------------- checks
def check_baseline(baseline_dir: Path, python: Path) -> None:
    """Fail early, naming what is wrong, when the checkout or its interpreter cannot run the 2023 recipe."""
    if not baseline_dir.is_dir():
        sys.exit(f"--baseline-dir {baseline_dir}: no such directory (a DESED_task checkout is expected)")
    for rel in (
        RECIPE / "train_sed.py",
        RECIPE / "confs" / "default.yaml",
        RECIPE / "local" / "classes_dict.py",
        Path("desed_task") / "dataio" / "datasets.py",
    ):
        if not (baseline_dir / rel).is_file():
            sys.exit(
                f"--baseline-dir {baseline_dir}: {rel} is missing (is this a DESED_task checkout with the "
                f"dcase2023_task4_baseline recipe?)"
            )
    if not (python.is_file() and os.access(python, os.X_OK)):
        sys.exit(f"--baseline-python {python}: not an executable file")
    probe = (
        "import pytorch_lightning, torch, torchaudio, yaml, pandas, numpy, sed_eval, psds_eval, "
        "sed_scores_eval, dcase_util, codecarbon, soundfile, scipy, thop, h5py; "
        "print('torch', torch.__version__, 'torchaudio', torchaudio.__version__, "
        "'pytorch_lightning', pytorch_lightning.__version__, 'numpy', numpy.__version__, "
        "'pandas', pandas.__version__)"
    )
    proc = subprocess.run([str(python), "-c", probe], check=False, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.exit(f"--baseline-python {python} cannot import what the 2023 recipe needs:\n{proc.stderr.strip()[-2000:]}")
    note(f"baseline python: {proc.stdout.strip()}")


# --------------------------------------------------------------------------- data and scratch copy
def make_data(data_dir: Path, sizes: dict[str, int], seed: int) -> list[str]:
    """The generated dataset (reused when ``data_dir`` already holds a complete one); returns its classes.

    No clip without events: the baseline drops strong clips that have no label row (``dropna``), so with them
    the two systems would not train on the same clips."""
    from sed.synth.scenes import SceneConfig, dataset_layout, generate_dataset

    layout = dataset_layout(data_dir)
    if not layout.complete():
        t0 = time.perf_counter()
        generate_dataset(data_dir, seed=seed, sizes=sizes, config=SceneConfig(empty_fraction=0.0))
        note(f"generated {sum(sizes.values())} clips in {time.perf_counter() - t0:.1f} s under {data_dir}")
    else:
        note(f"reusing the dataset in {data_dir}")
    return layout.classes()


def ours_command(
    data_dir: Path,
    classes: list[str],
    batch_sizes: list[int],
    eval_batch_size: int,
    workers: int,
    epochs: int,
    exp_dir: Path,
    exp_name: str,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``train.py +exp=desed_crnn`` on the generated dataset, with the TQDM bar :func:`parse` reads."""
    return [
        sys.executable,
        "train.py",
        "+exp=desed_crnn",
        f"data.root={data_dir}",
        "data.generate=false",
        f"data.classes=[{','.join(classes)}]",
        f"data.batch_sizes=[{','.join(map(str, batch_sizes))}]",
        f"data.eval_batch_size={eval_batch_size}",
        f"data.num_workers={workers}",
        f"trainer.max_epochs={epochs}",
        f"paths.exp_dir={exp_dir}",
        f"exp_name={exp_name}",
        f"+callbacks.tqdm_bar._target_={TQDM_BAR}",
        *extra,
    ]


def make_baseline_copy(baseline_dir: Path, dest: Path, data_dir: Path, classes: list[str], args) -> Path:
    """Scratch copy of the package and the 2023 recipe, pointed at ``data_dir``; returns the recipe folder."""
    import yaml  # PyYAML comes with Hydra

    ignore = shutil.ignore_patterns("__pycache__", "exp", "*.ckpt")
    shutil.copytree(baseline_dir / "desed_task", dest / "desed_task", ignore=ignore)
    recipe = dest / RECIPE
    shutil.copytree(baseline_dir / RECIPE, recipe, ignore=ignore)

    conf = yaml.safe_load((recipe / "confs" / "default.yaml").read_text())
    d, m = str(data_dir / "audio"), str(data_dir / "metadata")
    folders = {
        "synth_folder": f"{d}/train/strong/",
        "synth_tsv": f"{m}/train/strong.tsv",
        "weak_folder": f"{d}/train/weak/",
        "weak_tsv": f"{m}/train/weak.tsv",
        "unlabeled_folder": f"{d}/train/unlabeled/",
        "synth_val_folder": f"{d}/validation/",
        "synth_val_tsv": f"{m}/validation/validation.tsv",
        "synth_val_dur": f"{m}/validation/durations.tsv",
        "test_folder": f"{d}/test/",
        "test_tsv": f"{m}/test/test.tsv",
        "test_dur": f"{m}/test/durations.tsv",
    }
    for key, value in folders.items():
        conf["data"][key] = value
        if key.endswith("_folder"):  # 16-kHz files already: "resampling" finds the same files and skips
            conf["data"][key + "_44k"] = value
    conf["data"]["strong_folder"] = conf["data"]["strong_folder_44k"] = f"{d}/train/strong/"
    conf["data"]["strong_tsv"] = f"{m}/train/strong.tsv"  # unused without --strong_real
    conf["data"]["eval_folder"] = conf["data"]["eval_folder_44k"] = f"{d}/test/"
    conf["training"].update(
        n_epochs=args.epochs,
        num_workers=args.workers,
        backend=None,
        batch_size=list(args.batch_sizes),
        batch_size_val=args.eval_batch_size,
        enable_progress_bar=True,
    )
    conf["net"]["nclass"] = len(classes)
    (recipe / "confs" / "ab.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    (recipe / "local" / "classes_dict.py").write_text(
        '"""Classes of the generated A/B dataset (written by benchmarks/baseline_ab.py)."""\n\n'
        "from collections import OrderedDict\n\n"
        f"classes_labels = OrderedDict({[(c, i) for i, c in enumerate(classes)]!r})\n"
    )

    if not args.baseline_torchaudio_load:
        path = dest / "desed_task" / "dataio" / "datasets.py"
        src = path.read_text()
        if src.count("torchaudio.load(file)") != 1:
            sys.exit(
                f"{baseline_dir}/desed_task/dataio/datasets.py: expected one `torchaudio.load(file)` to replace "
                f"with a soundfile read; pass --baseline-torchaudio-load to keep it"
            )
        shim = (
            "\n\ndef _ab_load_audio(file):\n"
            '    """torchaudio.load as its soundfile backend read WAVs (float32, [channels, samples])."""\n'
            "    import soundfile\n\n"
            '    data, fs = soundfile.read(file, dtype="float32", always_2d=True)\n'
            "    return torch.from_numpy(data.T.copy()), fs\n"
        )
        first_def = src.index("\ndef ")
        path.write_text(
            src[:first_def] + shim + src[first_def:].replace("torchaudio.load(file)", "_ab_load_audio(file)")
        )
    return recipe


# --------------------------------------------------------------------------- one monitored run
@dataclass
class Run:
    name: str
    fragments: list[tuple[float, str]] = field(default_factory=list)
    memory: list[tuple[float, float]] = field(default_factory=list)
    returncode: int | None = None
    stopped_at_test: bool = False  # stopped by us when its test stage began
    wall: float = 0.0
    log: Path | None = None


def run_monitored(name: str, cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> Run:
    """Run ``cmd``, stamping every progress-bar/log fragment of its merged output on arrival and sampling the
    memory of its process tree; kill the whole process group after ``timeout`` seconds."""
    run = Run(name, log=log)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            run.memory.append((time.monotonic() - t0, tree_rss_mib(proc.pid)))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_group(proc)

    timer = threading.Timer(timeout, on_timeout)
    timer.start()
    assert proc.stdout is not None
    pending = b""
    with open(log, "w", encoding="utf-8") as out:
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                now = time.monotonic() - t0
                parts = re.split(rb"[\r\n]", pending + chunk)
                pending = parts.pop()
                for part in parts:
                    text = part.decode("utf-8", "replace").strip()
                    if text:
                        run.fragments.append((now, text))
                        out.write(f"{now:9.3f} {text}\n")
                        if BAR_TEST.match(text) and not run.stopped_at_test:  # nothing after this is measured
                            run.stopped_at_test = True
                            threading.Thread(target=_kill_group, args=(proc,), daemon=True).start()
                out.flush()  # the log can be followed while the run goes on
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            run.returncode = proc.wait()
            timer.cancel()
            stop.set()
            sampler.join()
    run.wall = time.monotonic() - t0
    if timed_out.is_set():
        run.returncode = run.returncode or -9
        print(f"{name}: killed after the {timeout:.0f} s timeout (log: {log})", file=sys.stderr)
    return run


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- parsing
@dataclass
class Measured:
    train_steps: int  # step intervals timed
    train_seconds: float
    val_seconds: list[float]
    peak_mib: float
    test_start: float


def parse(run: Run, clips_per_step: int) -> Measured:
    """Training step times, validation spans and peak memory from the stamped fragments (see the module doc)."""
    epochs: dict[int, dict] = {}
    state = None  # the epoch being read
    test_start = None
    for t, text in run.fragments:
        if BAR_TEST.match(text):
            test_start = t
            break
        m = BAR_TRAIN.match(text)
        if m:
            epoch, n = int(m.group(1)), int(m.group(2))
            e = epochs.setdefault(epoch, {"steps": {}, "val_start": None, "val_end": None, "postfix": None})
            state = e
            metrics = dict(METRIC.findall(text))
            if e["val_start"] is None:
                if n >= 1 and n not in e["steps"]:
                    e["steps"][n] = t
                e["postfix"] = metrics
            elif e["val_end"] is None and metrics != e["postfix"]:
                e["val_end"] = t
            continue
        if BAR_VAL.match(text) and state is not None and state["val_start"] is None:
            state["val_start"] = t
    if not epochs:
        raise RuntimeError(f"{run.name}: no `Epoch N: ... n/total` progress-bar line in its output ({run.log})")
    intervals, seconds, vals = 0, 0.0, []
    for _epoch, e in sorted(epochs.items()):
        steps = sorted(e["steps"].items())
        if len(steps) >= 2:
            intervals += steps[-1][0] - steps[0][0]
            seconds += steps[-1][1] - steps[0][1]
        if e["val_start"] is not None and e["val_end"] is not None:
            vals.append(e["val_end"] - e["val_start"])
    if intervals == 0:
        raise RuntimeError(f"{run.name}: fewer than 2 training steps seen in its progress bar ({run.log})")
    end = test_start if test_start is not None else float("inf")
    peak = max((mib for t, mib in run.memory if t <= end), default=float("nan"))
    return Measured(intervals, seconds, vals, peak, test_start or float("nan"))


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--baseline-dir", required=True, type=Path, help="your DESED_task checkout (only read)")
    parser.add_argument(
        "--baseline-python",
        required=True,
        type=Path,
        help="the Python of an environment in which the baseline's 2023 recipe runs",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset folder, generated there if absent and kept (default: a temp folder, removed)",
    )
    parser.add_argument("--strong", type=int, default=120, help="strongly labelled (synthetic) training clips")
    parser.add_argument("--weak", type=int, default=134, help="weak clips (10%% held out for validation by both)")
    parser.add_argument("--unlabeled", type=int, default=240)
    parser.add_argument("--validation", type=int, default=24, help="strongly labelled validation clips")
    parser.add_argument(
        "--test", type=int, default=12, help="test clips (the run is stopped when its test stage begins)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs=3, default=[12, 12, 24], metavar=("STRONG", "WEAK", "UNLAB"))
    parser.add_argument("--eval-batch-size", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both")
    parser.add_argument("--pairs", type=int, default=1, help="(baseline, ours) pairs; odd pairs run ours first")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to one training run")
    parser.add_argument(
        "--baseline-omp-default",
        action="store_true",
        help="do not give the baseline OMP_WAIT_POLICY=PASSIVE (ours sets it at import)",
    )
    parser.add_argument(
        "--baseline-thp",
        action="store_true",
        help="give the baseline THP_MEM_ALLOC_ENABLE=1 too (ours sets it at import)",
    )
    parser.add_argument(
        "--baseline-torchaudio-load",
        action="store_true",
        help="keep the baseline's torchaudio.load (needs FFmpeg for torchcodec on torchaudio >= 2.9)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="ours with bf16 autocast (trainer.precision=bf16-mixed; pays on CPUs with AVX512-BF16 or "
        "AMX), the baseline in fp32: its validation fails under bf16 (local/utils.py converts "
        "the bf16 outputs with .numpy())",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, copies, run dirs)")
    args = parser.parse_args()

    baseline_dir = args.baseline_dir.expanduser().resolve()
    baseline_python = args.baseline_python.expanduser().absolute()
    print(machine_line())
    check_baseline(baseline_dir, baseline_python)

    scratch = Path(tempfile.mkdtemp(prefix="sed_bench_baseline_ab_"))
    try:
        data_dir = args.data_dir.expanduser().resolve() if args.data_dir else scratch / "data"
        sizes = {
            "strong": args.strong,
            "weak": args.weak,
            "unlabeled": args.unlabeled,
            "validation": args.validation,
            "test": args.test,
        }
        classes = make_data(data_dir, sizes, args.seed)
        recipe = make_baseline_copy(baseline_dir, scratch / "desed_task", data_dir, classes, args)
        weak_val = max(1, round(0.1 * args.weak))  # both: pandas sample(frac=0.9) / data.weak_val_fraction=0.1
        val_clips = args.validation + weak_val
        clips_per_step = sum(args.batch_sizes)

        base_env = dict(os.environ, PYTHONUNBUFFERED="1")
        base_env.pop("PYTHONPATH", None)
        bl_env = dict(base_env, PYTHONPATH=str(scratch / "desed_task"))
        if not args.baseline_omp_default:
            bl_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if args.baseline_thp:
            bl_env["THP_MEM_ALLOC_ENABLE"] = "1"
        ours_env = dict(base_env)
        bl_cmd = lambda i: [
            str(baseline_python),
            "train_sed.py",
            "--conf_file",
            "confs/ab.yaml",
            "--log_dir",
            str(scratch / f"baseline_exp_{i}"),
            "--gpus",
            "0",
        ]
        ours_cmd = lambda i: ours_command(
            data_dir,
            classes,
            args.batch_sizes,
            args.eval_batch_size,
            args.workers,
            args.epochs,
            scratch / f"ours_exp_{i}",
            "baseline_ab",
            ("trainer.precision=bf16-mixed",) if args.bf16 else (),
        )
        note(
            f"baseline: cd {recipe} && PYTHONPATH={scratch / 'desed_task'} "
            f"{'' if args.baseline_omp_default else 'OMP_WAIT_POLICY=' + bl_env['OMP_WAIT_POLICY'] + ' '}"
            f"{'THP_MEM_ALLOC_ENABLE=1 ' if args.baseline_thp else ''}" + " ".join(bl_cmd(0))
        )
        note("ours:     " + " ".join(ours_cmd(0)))

        measured: dict[str, list[Measured]] = {"baseline": [], "ours": []}
        walls: dict[str, list[float]] = {"baseline": [], "ours": []}
        for i in range(args.pairs):
            order = ["baseline", "ours"] if i % 2 == 0 else ["ours", "baseline"]
            for name in order:
                load = os.getloadavg()[0]
                if name == "baseline":
                    run = run_monitored(name, bl_cmd(i), recipe, bl_env, scratch / f"baseline_{i}.log", args.timeout)
                else:
                    run = run_monitored(name, ours_cmd(i), ROOT, ours_env, scratch / f"ours_{i}.log", args.timeout)
                if run.returncode != 0 and not run.stopped_at_test:
                    tail = "\n".join(text for _, text in run.fragments[-40:])
                    raise RuntimeError(f"{name} run {i + 1} failed (exit {run.returncode}); last output:\n{tail}")
                m = parse(run, clips_per_step)
                measured[name].append(m)
                walls[name].append(run.wall)
                note(
                    f"pair {i + 1} {name}: {m.train_steps * clips_per_step / m.train_seconds:.2f} train clips/s "
                    f"({m.train_seconds / m.train_steps:.2f} s per {clips_per_step}-clip step over {m.train_steps} "
                    f"steps), validation {', '.join(f'{v:.1f}' for v in m.val_seconds)} s, peak {m.peak_mib:,.0f} MiB, "
                    f"test stage from {m.test_start:.0f} s, run stopped at {run.wall:.0f} s (load1 at start {load:.2f}, "
                    f"after {os.getloadavg()[0]:.2f})"
                )

        def rate(ms: list[Measured]) -> float:
            return median(m.train_steps * clips_per_step / m.train_seconds for m in ms)

        def val(ms: list[Measured]) -> float:
            return median(v for m in ms for v in m.val_seconds)

        def peak(ms: list[Measured]) -> float:
            return median(m.peak_mib for m in ms)

        b, o = measured["baseline"], measured["ours"]
        n = f"median of {args.pairs} run(s) each, interleaved"
        shape = (
            f"DESED CRNN, batch {'/'.join(map(str, args.batch_sizes))}, {args.workers} workers, {args.epochs} "
            f"epoch(s), {args.strong}+{args.weak - weak_val}+{args.unlabeled} training clips"
            + (", ours bf16 autocast, the baseline fp32" if args.bf16 else "")
        )
        result(
            "baseline_ab",
            f"train: ours {rate(o):.2f} clips/s, DESED_task baseline {rate(b):.2f} clips/s; ratio "
            f"ours/baseline {rate(o) / rate(b):.2f}x [{n}; {shape}; first step of each epoch excluded]",
        )
        result(
            "baseline_ab",
            f"validation ({val_clips} clips: {args.validation} strong + {weak_val} weak held out, "
            f"incl. epoch-end scoring): ours {val(o):.1f} s ({val(o) / val_clips * 1000:.0f} ms/clip), baseline "
            f"{val(b):.1f} s ({val(b) / val_clips * 1000:.0f} ms/clip); ratio baseline/ours {val(b) / val(o):.2f}x "
            f"faster [{n}]",
        )
        result(
            "baseline_ab",
            f"peak memory (RSS + workers' private memory, until the test stage): ours "
            f"{peak(o):,.0f} MiB, baseline {peak(b):,.0f} MiB; ratio ours/baseline {peak(o) / peak(b):.2f}x [{n}]",
        )
        result(
            "baseline_ab",
            f"whole run until its test stage began (start-up, epoch, checkpoints): ours "
            f"{median(walls['ours']):.0f} s, baseline {median(walls['baseline']):.0f} s",
        )
    finally:
        if args.keep:
            note(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
