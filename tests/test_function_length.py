"""No production function is over 80 lines (issue 23): a newcomer reads each one whole.

A function's length is counted from its `def` line to its last line (decorators not counted; nested functions
count in their parent and are also checked on their own), over every module in the product packages.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "client", "server", "simulations")
MAX_LINES = 80

# No exemptions: split a long function instead. ("path" would exempt a file, "path:Qual.name" one function.)
EXEMPT: tuple[str, ...] = ()


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines from `def` to the end) of every function in `source`, nested ones too."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _exempt(path: str, name: str) -> bool:
    return path in EXEMPT or f"{path}:{name}" in EXEMPT


def test_the_count_is_def_line_to_last_line():
    """A function of exactly MAX_LINES lines passes and one more line is counted; methods and nested functions
    are found by their qualified names."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1))
    source = textwrap.dedent("""
        import functools

        class A:
            @functools.lru_cache
            def method(self):
                def inner():
                    return 1
                return inner
        """) + f"\ndef fits():\n{body}\n\n\ndef too_long():\n{body}\n    x = 0\n"
    lengths = {name: n for name, _, n in function_lengths(source)}
    assert lengths == {"A.method": 4, "A.method.inner": 2, "fits": MAX_LINES, "too_long": MAX_LINES + 1}


def test_no_production_function_is_over_80_lines():
    too_long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for name, line, n in function_lengths(path.read_text(encoding="utf-8")):
                if n > MAX_LINES and not _exempt(rel, name):
                    too_long.append(f"{rel}:{line} {name}: {n} lines")
    assert not too_long, f"functions over {MAX_LINES} lines (split them): " + "; ".join(too_long)


def test_every_exemption_names_a_file_or_function_that_exists():
    """An exemption whose function was renamed or split would silently exempt nothing: each must still exist
    (delete it once its function is under the limit)."""
    for entry in EXEMPT:
        path, _, name = entry.partition(":")
        assert (ROOT / path).is_file(), entry
        if name:
            names = {n for n, _, _ in function_lengths((ROOT / path).read_text(encoding="utf-8"))}
            assert name in names, entry
