"""The commands the documentation shows run as written: every fenced ``bash`` command of README.md, docs/*.md,
recipes/ and benchmarks/ names an entry point that exists (``python train.py``, ``python -m sed.X``,
``python benchmarks/X.py``, ``python recipes/.../prepare.py``), options that script defines, ``pip`` extras that
pyproject.toml declares, configuration options that exist in conf/ (``exp=NAME``, ``model=NAME``, any
``group=option``), and every ``train.py`` command line composes against the schema (an unknown key fails)."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

DOCS = sorted(
    {REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("recipes/**/*.md"), *REPO.glob("benchmarks/**/*.md")}
)
PYTHON = re.compile(r"(^|/)python(3(\.\d+)?)?$")
PIP = re.compile(r"(^|/)pip3?$")
OPERATORS = {"&&", "||", ";", "|"}


@dataclass
class Command:
    where: str  # file:line
    argv: list[str]


def fenced_commands(text: str, name: str) -> list[Command]:
    """The commands of every ```bash block: continuation lines joined, comments dropped, ``a && b`` split, env
    assignments before the program dropped, ``<placeholder>`` made one word and ``[optional]`` brackets removed."""
    commands, block, start = [], None, 0
    lines = text.splitlines()
    for i, line in enumerate(lines, start=1):
        fence = line.strip()
        if block is None:
            if fence.startswith("```") and fence[3:].strip() in ("bash", "sh", "shell", "console"):
                block, start = [], i
            continue
        if fence.startswith("```"):
            commands += _block_commands(block, name, start)
            block = None
        else:
            block.append(line)
    return commands


def _block_commands(block: list[str], name: str, start: int) -> list[Command]:
    out, pending, first = [], "", 0
    for offset, line in enumerate(block, start=1):
        if not pending:
            first = start + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        text = re.sub(r"<([^<>=]+)>", lambda m: re.sub(r"\W+", "_", m.group(1)), text)
        try:
            words = shlex.split(text, comments=True)
        except ValueError as err:
            out.append(Command(f"{name}:{first}", [f"<unparsable: {err}>"]))
            continue
        words = [_unbracket(w) for w in words]
        segment: list[str] = []
        for word in [*words, ";"]:
            if word in OPERATORS:
                while segment and re.match(r"^[A-Z_][A-Z0-9_]*=", segment[0]):
                    segment.pop(0)
                if segment:
                    out.append(Command(f"{name}:{first}", segment))
                segment = []
            else:
                segment.append(word)
    return out


def _unbracket(word: str) -> str:
    """``[--flag`` / ``value]`` / ``[key=value]`` of a synopsis without the brackets of optional parts."""
    if word.startswith("["):
        word = word[1:]
    if word.endswith("]") and "[" not in word:
        word = word[:-1]
    return word


def documented_commands() -> list[Command]:
    return [c for path in DOCS for c in fenced_commands(path.read_text(), str(path.relative_to(REPO)))]


# ------------------------------------------------------------------------------------------------------- checks
def _groups() -> dict[str, set[str]]:
    """``group -> options`` of conf/: every folder holding YAML files (``hydra/launcher`` included)."""
    conf = REPO / "conf"
    groups: dict[str, set[str]] = {}
    for path in conf.rglob("*.yaml"):
        if path.parent != conf:
            groups.setdefault(str(path.parent.relative_to(conf)), set()).add(path.stem)
    return groups


def _extras() -> set[str]:
    """The extras of pyproject.toml's ``[project.optional-dependencies]`` (read without tomllib: Python 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*=", section, re.M))


def _flag_defined(flag: str, sources: list[Path], entry: tuple[str, ...]) -> bool:
    """The option is written in the entry point's sources, or (options made in a loop) in its ``--help``."""
    if flag in ("-h", "--help") or any(f'"{flag}"' in p.read_text() or f"'{flag}'" in p.read_text() for p in sources):
        return True
    return re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", _help(entry)) is not None


@functools.lru_cache(maxsize=None)
def _help(entry: tuple[str, ...]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, *entry, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    return proc.stdout


def train_overrides(argv: list[str]) -> list[str]:
    """The Hydra overrides of a ``python train.py ...`` argv (``-m``/``--multirun`` dropped)."""
    return [a for a in argv if a not in ("-m", "--multirun") and not a.startswith("--")]


def check_overrides(overrides: list[str], groups: dict[str, set[str]]) -> list[str]:
    """A group chosen on the command line must name existing options (``model=crnn``, ``callbacks=[a,b]``,
    sweeps ``model=a,b``)."""
    problems = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in groups and value:
            for option in re.split(r"[,\[\]]", value):
                if option and option != "null" and option not in groups[key]:
                    problems.append(f"{key}={option}: no conf/{key}/{option}.yaml")
    return problems


def check_command(argv: list[str], groups: dict[str, set[str]], extras: set[str]) -> list[str]:
    """What is wrong with one documented command (empty: nothing found)."""
    program, args = argv[0], argv[1:]
    if argv[0].startswith("<unparsable"):
        return [argv[0]]
    if PIP.search(program):
        wanted = [e for spec in args for group in re.findall(r"^\.\[([^\]]+)\]$", spec) for e in group.split(",")]
        return [f"pip extra [{extra}] is not in pyproject.toml" for extra in wanted if extra not in extras]
    if not PYTHON.search(program) or not args:
        return []  # another program (tensorboard, huggingface-cli, tmux, ...): not ours to check
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        if not module.startswith("sed"):
            return [] if importlib.util.find_spec(module) else [f"python -m {module}: no such module"]
        base = REPO.joinpath(*module.split("."))
        entry = base / "__main__.py" if base.is_dir() else base.with_suffix(".py")
        if not entry.is_file() or ("__main__" not in entry.read_text() and entry.name != "__main__.py"):
            return [f"python -m {module}: no {entry.relative_to(REPO)} with a __main__ entry"]
        sources = [entry, *sorted((REPO / "sed").rglob("*.py"))]
    else:
        script, rest = REPO / args[0], args[1:]
        if not script.is_file():
            return [f"python {args[0]}: no such file"]
        if script.name == "train.py" and script.parent == REPO:
            return check_overrides(train_overrides(rest), groups)
        sources = [script, *sorted(script.parent.glob("*.py")), *sorted((REPO / "benchmarks").glob("_*.py"))]
    problems = []
    for i, arg in enumerate(rest):
        if arg == "--":  # benchmarks/quickstart.py passes the rest to train.py
            return problems + check_overrides(rest[i + 1 :], groups)
        flag = arg.split("=", 1)[0]
        entry = tuple(args[:2]) if args[0] == "-m" else (args[0],)
        if re.match(r"^--?[A-Za-z][\w-]*$", flag) and not _flag_defined(flag, sources, entry):
            problems.append(f"{flag}: not an option of {' '.join(argv[:3] if args[0] == '-m' else argv[:2])}")
    return problems


def compose_problem(overrides: list[str]) -> str | None:
    """None when ``python train.py OVERRIDES`` composes against the schema (sweeps reduced to their first value),
    else the error. Call inside an ``initialize_config_dir`` of conf/."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import sed.run.config

    argv = ["train.py", *overrides]
    sed.run.config.accept_appended_exp(argv)  # +exp=NAME as train.py takes it
    overrides = argv[1:]
    parser, single = OverridesParser.create(), []
    try:
        for override in parser.parse_overrides(overrides):
            key = override.get_key_element()
            if override.is_sweep_override():
                if key.lstrip("+~").startswith("hydra.sweeper.params."):  # Optuna's search space, given as text
                    single.append(f"{key}='{override.get_value_element_as_str()}'")
                    continue
                value = next(iter(override.sweep_string_iterator()))
            else:
                value = override.get_value_element_as_str()
            single.append(key if override.is_delete() and value is None else f"{key}={value}")
        # A scratch exp_dir: the run-directory resolvers must not touch the repository's exp/.
        compose(
            "config",
            overrides=[f"paths.exp_dir={tempfile.gettempdir()}/sed-test-docs", *single],
            return_hydra_config=True,
        )
    except Exception as err:  # noqa: BLE001  (any composition error is the finding)
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def compose_problems(commands: list[tuple[str, list[str]]]) -> list[str]:
    from hydra import initialize_config_dir

    problems, seen = [], set()
    with warnings.catch_warnings(), initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        # as train.py: the submitit launcher files share their names with the plugin's schemas (see train.py)
        warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
        for where, overrides in commands:
            if tuple(overrides) in seen:
                continue
            seen.add(tuple(overrides))
            problem = compose_problem(overrides)
            if problem:
                problems.append(f"{where}: python train.py {' '.join(overrides)}: {problem}")
    return problems


def _train_commands(commands: list[Command]) -> list[tuple[str, list[str]]]:
    out = []
    for c in commands:
        if PYTHON.search(c.argv[0]) and len(c.argv) > 1 and c.argv[1] == "train.py":
            out.append((c.where, train_overrides(c.argv[2:])))
        elif PYTHON.search(c.argv[0]) and len(c.argv) > 1 and c.argv[1].endswith("quickstart.py") and "--" in c.argv:
            out.append((c.where, c.argv[c.argv.index("--") + 1 :]))
    return out


# -------------------------------------------------------------------------------------------------------- tests
def test_every_documented_command_names_what_exists():
    commands = documented_commands()
    readme = [c for c in commands if c.where.startswith("README.md")]
    assert len(readme) >= 10 and len(commands) >= 50, "the fenced commands were not found"
    groups, extras = _groups(), _extras()
    problems = [
        f"{c.where}: {' '.join(c.argv)}\n    {p}" for c in commands for p in check_command(c.argv, groups, extras)
    ]
    assert not problems, "documented commands that do not run as written:\n" + "\n".join(problems)


def test_every_documented_train_command_composes():
    commands = _train_commands(documented_commands())
    assert len(commands) >= 20, "the train.py commands were not found"
    problems = compose_problems(commands)
    assert not problems, "documented train.py commands that do not compose:\n" + "\n".join(problems)


def test_the_checks_catch_wrong_names():
    """Each kind of mistake the checks exist for is reported (so a renamed option fails this file)."""
    doc = """
```bash
python train.py exp=nosuch_recipe model=crnn,nosuch_model callbacks=[rich,nosuch_callback]
python -m sed.nosuch_command in/ -o out.tsv
python benchmarks/run_all.py --only scoring --nosuch-flag 3
python benchmarks/nosuch_bench.py
python benchmarks/quickstart.py --seeds 1 -- features=nosuch_features
pip install -e ".[nosuch_extra]"
```
"""
    commands = fenced_commands(doc, "doc.md")
    groups, extras = _groups(), _extras()
    found = "\n".join(p for c in commands for p in check_command(c.argv, groups, extras))
    for name in (
        "nosuch_recipe",
        "nosuch_model",
        "nosuch_callback",
        "sed.nosuch_command",
        "--nosuch-flag",
        "nosuch_bench.py",
        "nosuch_features",
        "nosuch_extra",
    ):
        assert name in found, f"{name} not reported:\n{found}"
    assert "crnn:" not in found and "rich:" not in found  # the existing ones are not
    problems = compose_problems(
        [
            ("doc.md:2", ["training.nosuch_key=1"]),
            ("doc.md:3", ["model.encoder.path=~/x"]),
            ("doc.md:4", train_overrides(["-m", "training.lr=1e-3,3e-4", "+exp=desed_crnn"])),
        ]
    )
    assert len(problems) == 2 and "nosuch_key" in problems[0], problems


def test_ci_runs_the_readme_test_command():
    """.ci/run is the README's second quick-start command, verbatim."""
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    text = (REPO / "README.md").read_text()
    assert f"```bash\n{ci}\n```" in text, f".ci/run runs {ci!r}, which is not a fenced README command"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(), re.M)
    return {re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", h.replace("`", "").lower())) for h in headings}


@pytest.mark.parametrize("page", [str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(page):
    """Every relative link of a page points at a file or folder of the repository, and at a heading of it."""
    path = REPO / page
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page}: links to missing files or headings: {broken}"
