"""Every public example runs, so none can rot: the README's Python, the docstrings' doctests, and every command line
the README and the verbs' --help show (each parsed by the real parser)."""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

import pytest

import copycatch.api
import copycatch.serve as serve
from copycatch.cli.main import VERBS, build_parser
from copycatch.data.fashion_mnist import fashion_mnist_search_path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def _has_fashion_mnist() -> bool:
    return any((d / "train-images-idx3-ubyte.gz").is_file() for d in fashion_mnist_search_path())


@pytest.mark.parametrize("module", [copycatch.api, serve], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(not _has_fashion_mnist(), reason="Fashion-MNIST is not installed (make data installs it)")
def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _blocks("python")
    assert blocks, "the README shows no Python example"
    monkeypatch.chdir(tmp_path)  # the example writes victim.cckeys where it runs
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "verdict:" in out and "Fisher combined" in out and (tmp_path / "victim.cckeys").is_file()


def _command_lines(text: str) -> list[str]:
    """``copycatch ...`` commands in a text, comments and shell chaining removed."""
    lines = []
    for raw in text.splitlines():
        line = raw.split("  #")[0].strip()
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("copycatch "):
                lines.append(part)
    return lines


def _help_texts() -> dict[str, str]:
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    return {"copycatch": parser.epilog or "", **{verb: verbs[verb].epilog or "" for verb in VERBS}}


def test_readme_and_help_show_command_lines():
    assert len(_command_lines("\n".join(_blocks("sh")))) >= 15
    assert sum(len(_command_lines(text)) for text in _help_texts().values()) >= 15


SHOWN = {*_command_lines("\n".join(_blocks("sh"))), *(c for t in _help_texts().values() for c in _command_lines(t))}


@pytest.mark.parametrize("command", sorted(SHOWN))
def test_every_shown_command_line_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)
