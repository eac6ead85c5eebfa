"""The README and docs/ stay true to the tree: every relative link resolves, and every `ptplus-tune` command they
show is one the CLI's parsers accept (parsed, not run: nothing starts)."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "search_spaces" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(?:sh|bash|console)?\n(.*?)```", re.S)
INLINE = re.compile(r"`(ptplus-tune [^`]+)`")


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{_name(page)}: links to missing files: {broken}"


def commands(text: str) -> list[str]:
    """The `ptplus-tune` command lines of a page: in its shell blocks (also inside `ray exec "..."`) and inline."""
    found = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["ray"]:  # ray exec cluster.yaml "ptplus-tune ..."
                words = shlex.split(words[-1]) if words[-1].startswith("ptplus-tune ") else []
            if "ptplus-tune" in words:
                found.append(shlex.join(words[words.index("ptplus-tune"):]))
    return found + [span for span in INLINE.findall(text) if "…" not in span]


def parse(command: str) -> None:
    from ptplus_tune.cli import mlflow_cmds
    from ptplus_tune.cli.train import build_train_parser
    from ptplus_tune.cli.tune import build_tune_parser

    argv = shlex.split(command)[1:]
    if argv and argv[0] == "train":
        build_train_parser().parse_args(argv[1:])
    elif argv and argv[0] in ("ui", "predict"):
        getattr(mlflow_cmds, f"build_{argv[0]}_parser")().parse_args(argv[1:])
    else:
        build_tune_parser().parse_args(argv)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_command_shown_parses(page, capsys):
    shown = commands(page.read_text(encoding="utf-8"))
    rejected = []
    for command in shown:
        try:
            parse(command)
        except SystemExit as done:
            if done.code == 0:  # --help
                continue
            rejected.append((command, capsys.readouterr().err.strip().splitlines()[-1:]))
    assert not rejected, f"{_name(page)}: commands the CLI rejects: {rejected}"


def test_the_readme_shows_commands_and_stays_short():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert len(commands(text)) >= 8
    first = text.splitlines()[3:5]  # the two commands of a fresh machine come first
    assert first[0].startswith("make demo   # installs") and first[1].startswith("make test   # installs")
