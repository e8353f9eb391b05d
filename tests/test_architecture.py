"""The package's shape: the layer folders at the top, no import cycles anywhere (the layers contract itself is
checked by import-linter in `make test`)."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

import copycatch

PACKAGE = Path(copycatch.__file__).parent
LAYERS = {"core", "data", "models", "oracles", "schemes", "attacks", "serve", "verification", "bench", "cli"}


def test_the_top_level_holds_only_the_api_and_the_layers():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules == {"__init__.py", "api.py", "_version.py"}
    assert packages == LAYERS


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back_through_others():
    assert _cycles(grimp.build_graph("copycatch")) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


def test_file_formats_keep_their_names_when_modules_move():
    """Files written before a refactor must still load: the format names are not module paths."""
    from copycatch.attacks.removal import evasion
    from copycatch.core import key, keyset
    from copycatch.models import base as models
    from copycatch.verification import calibration, report, transcript

    assert key.FORMAT == "copycatch.key/1"
    assert (keyset.FORMAT, key.KEYSET_HEADER) == ("copycatch.keyset/1", "copycatch.keyset")
    assert models.FORMAT == "copycatch.model/1"
    assert transcript.FORMAT == "copycatch.transcript/1"
    assert calibration.FORMAT == "copycatch.calibration/1"
    assert report.FORMAT == "copycatch.evidence/1"
    assert evasion.FORMAT == "copycatch.evasion/1"


def test_importing_the_package_and_the_cli_leaves_scipy_stats_out():
    """scipy.stats holds 45 MB of resident memory; only verification needs it, so an embed must not load it."""
    import subprocess
    import sys

    code = "import sys, copycatch, copycatch.cli.main as m; m.build_parser(); print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_and_help_start_without_torch():
    """`copycatch --version` and `copycatch --help` import no verb's machinery: torch alone takes seconds to load."""
    import subprocess
    import sys

    for flag in ("--version", "--help"):
        code = (
            "import contextlib, io, sys\n"
            "from copycatch.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            f"    main([{flag!r}])\n"
            "print(out.getvalue().startswith(('copycatch ', 'usage: copycatch')), 'torch' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["True", "False"], (flag, out.stdout, out.stderr)


def test_the_package_exports_its_public_api_lazily():
    """`import copycatch` loads no torch; each name of ``__all__`` resolves on first use, and dir() lists just them."""
    import subprocess
    import sys

    code = "import sys, copycatch as cc; print('torch' in sys.modules, sorted(dir(cc)) == sorted(cc.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
    assert len(set(copycatch.__all__)) == len(copycatch.__all__)
    assert set(copycatch.__all__) == {*copycatch._LAZY, "__version__"}
    for name in copycatch.__all__:
        assert getattr(copycatch, name) is not None
    assert copycatch.embed is copycatch.api.embed and copycatch.Key.__module__ == "copycatch.core.key"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        copycatch.nope  # noqa: B018
    assert (PACKAGE / "py.typed").is_file()  # PEP 561: type checkers read the package's hints
