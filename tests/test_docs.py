"""What a newcomer copies from the docs works: every TOML block parses, every `fedctx ...` line names commands and
options the command line has, and every relative link and #anchor in README.md and docs/ points somewhere."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import typer.main

from common.config import Config
from simulations.cli.app import cli
from simulations.sweep import _PLAN_KEYS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETTINGS = set(Config().to_flwr())
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(lang: str) -> list[tuple[str, str]]:
    return [(f"{p.relative_to(ROOT)}:{p.read_text()[:m.start()].count(chr(10)) + 1}", m.group(2))
            for p in DOCS for m in FENCE.finditer(p.read_text()) if m.group(1) == lang]


def _fedctx_lines() -> list[tuple[str, str]]:
    """(where, command line) of every `fedctx ...` in a code block (continued lines joined) or in inline code."""
    out = []
    for p in DOCS:
        text = p.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) not in ("", "bash", "sh", "console", "shell"):
                continue
            for i, line in enumerate(m.group(2).replace("\\\n", " ").splitlines()):
                line = line.strip().removeprefix("$ ")
                if re.match(r"(\S*/)?fedctx\s", line):
                    out.append((f"{p.relative_to(ROOT)} (block at line {text[:m.start()].count(chr(10)) + 1})", line))
        prose = FENCE.sub("", text)
        out += [(f"{p.relative_to(ROOT)} (inline)", m.group(1)) for m in re.finditer(r"`(fedctx\s[^`]+)`", prose)]
    return out


def test_every_toml_block_parses():
    blocks = _blocks("toml")
    assert blocks, "no ```toml block found"
    for where, body in blocks:
        try:
            tomllib.loads(body)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{where}: TOML 1.0 (tomllib) rejects this block: {exc}")


def _check(line: str) -> str | None:
    """None if `line`'s commands and options exist in the CLI; else what does not."""
    words = shlex.split(line.split(" #")[0].replace("[", " ").replace("]", " ").replace("|", " "))
    command: click.Command = typer.main.get_command(cli)
    path = ["fedctx"]
    words = words[1:]
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(click.Context(command), words[0])
        if sub is None:
            return f"no command `{' '.join(path + [words[0]])}`"
        command, path, words = sub, path + [words[0]], words[1:]
    if isinstance(command, click.Group):
        return None if not words or words[0] in ("--help",) else f"`{' '.join(path)}` needs a sub-command"
    names = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for w, value in zip(words, words[1:] + [""]):
        if w.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", w):
            if w.split("=")[0] not in names:
                return f"`{' '.join(path)}` has no option {w.split('=')[0]} (it has {', '.join(sorted(names))})"
        if w == "--set" and "=" in value:  # a setting of [tool.flwr.app.config] (sweep: also its plan's keys)
            key = value.split("=")[0]
            if key not in SETTINGS and not (path[-1] == "sweep" and key in _PLAN_KEYS):
                return f"`{' '.join(path)}`: no setting {key!r} (see docs/configuration.md)"
    return None


def test_every_fedctx_line_names_commands_and_options_that_exist():
    lines = _fedctx_lines()
    assert len(lines) > 10
    problems = [f"{where}: {line!r}: {why}" for where, line in lines if (why := _check(line))]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_wrong_command_and_a_wrong_option():
    assert _check("fedctx device recommend --state S --user 42 [-k 10] [--json]") is None
    assert "no command" in _check("fedctx device recomend --state S")
    assert "no option --usr" in _check("fedctx device recommend --state S --usr 42")
    assert _check("fedctx simulate --set num-rounds=3") is None
    assert "no setting 'num-round'" in _check("fedctx simulate --set num-round=3")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_every_relative_link_and_anchor_exists():
    problems = []
    for p in DOCS:
        for m in re.finditer(r"\]\(([^)\s]+)\)", FENCE.sub("", p.read_text())):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file, _, anchor = target.partition("#")
            dest = (p.parent / file).resolve() if file else p
            if not dest.exists():
                problems.append(f"{p.relative_to(ROOT)}: link to {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{p.relative_to(ROOT)}: link to {target}: no heading with that anchor in "
                                f"{dest.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)
