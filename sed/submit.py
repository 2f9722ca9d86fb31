"""``python -m sed.submit``: a DCASE Task 4 submission package from run directories, or ``--check PACKAGE.zip``
(see :mod:`sed.dcase.submit`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from sed.dcase.checker import check_package, report
from sed.dcase.submit import SubmissionError, build_package
from sed.dcase.template import DEFAULT_YEAR, YEARS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sed.submit", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", help="run directories of one system (with --label)")
    parser.add_argument("--label", default=None, help="label of the system of RUNS: [Lastname]_[INST]_task4_[1-4]")
    parser.add_argument(
        "--system",
        nargs="+",
        action="append",
        default=[],
        metavar=("LABEL", "RUN"),
        help="a system: its label and its run directories (repeat for up to 4 systems)",
    )
    parser.add_argument("-o", "--output", help="folder to write (new, empty, or written by sed.submit)")
    parser.add_argument(
        "--eval-audio", default=None, help="folder of the evaluation set's audio (the outputs DCASE scores)"
    )
    parser.add_argument(
        "--dev-test",
        action="store_true",
        help="package the runs' development test outputs instead (a dry run: not submittable)",
    )
    parser.add_argument("--report", default=None, help="the technical report (PDF)")
    parser.add_argument(
        "--info",
        default=None,
        help="YAML in the metadata layout with what runs cannot know (names, authors, source code); "
        "or {LABEL: {...}} per system",
    )
    parser.add_argument(
        "--baseline-energy",
        default=None,
        help="baseline_energy.json (or its folder) written by python -m sed.dcase.baseline_energy",
    )
    parser.add_argument(
        "--year", type=int, default=DEFAULT_YEAR, choices=YEARS, help="template year (default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        choices=("teacher", "student"),
        default=None,
        help="network to package (default: the one validation preferred, from each run's status.json)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N for the evaluation inference")
    parser.add_argument("--check", metavar="PACKAGE.zip", default=None, help="check a package and exit")
    parser.add_argument("--eval-clips", type=int, default=None, help="with --check: clips every run must cover")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point. Building: 0 when written (what is left to do is printed), 2 when it cannot be made. ``--check``:
    0 when the package is ready to submit, 1 when not."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.check:
        findings = check_package(args.check, args.year, args.eval_clips)
        print(report(findings, args.check))
        return 1 if any(f.level == "error" for f in findings) else 0
    systems = [(group[0], group[1:]) for group in args.system]
    if args.runs:
        if not args.label:
            print("error: give --label [Lastname]_[INST]_task4_[1-4] for the run directories", file=sys.stderr)
            return 2
        systems.insert(0, (args.label, args.runs))
    if not args.output:
        print("error: give -o OUT, the folder to write the package into", file=sys.stderr)
        return 2
    from sed.data.audio import AudioError
    from sed.data.tsv import AnnotationError

    try:
        built = build_package(
            systems,
            args.output,
            args.eval_audio,
            args.dev_test,
            args.report,
            args.info,
            args.baseline_energy,
            args.year,
            args.model,
            args.device,
        )
    except (SubmissionError, FileNotFoundError, AudioError, AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(built.findings, built.path), file=sys.stderr)
    if built.findings:
        print(
            "Fix the errors above (fields TODO: edit the meta.yaml in the zip, or rebuild with --info FILE.yaml), "
            f"then check again: python -m sed.submit --check {built.path}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
