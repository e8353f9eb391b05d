"""The built wheel is a whole product: installed in a fresh virtual environment, away from the checkout, it runs
`copycatch bench fmnist-quick --dry-run` from the grids it ships."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from copycatch.bench.grid import load_grid, packaged_grids

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "src" / "copycatch" / "bench" / "grids"

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYCATCH_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the checkout (pyproject, README, LICENSE, src), so the build leaves the checkout alone."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    # this environment's setuptools (torch requires it), not a download: the test runs offline
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("copycatch-*.whl")
    return wheel


def test_a_wheel_installed_in_a_fresh_venv_runs_the_packaged_grid(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"copycatch/bench/grids/{f.name}" for f in GRIDS.glob("*.yaml")}
    assert "copycatch/bench/grids/fmnist-quick.yaml" in shipped
    assert shipped <= names, f"grids missing from the wheel: {sorted(shipped - names)}"
    assert "copycatch/py.typed" in names

    # A fresh environment with the wheel alone; torch and the other dependencies are seen through a .pth line naming
    # this environment's site-packages (a line of a .pth names a folder; the .pth files inside that folder, among
    # them the editable install's path to src/, are not read), so copycatch itself can only come from the wheel.
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    purelib = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip()
    )
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python)
    _run(*pip, "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    where = _run(python, "-c", "import copycatch; print(copycatch.__file__)", cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(purelib), where
    listed = _run(
        python, "-c", "from copycatch.bench.grid import packaged_grids; print(*packaged_grids())", cwd=tmp_path
    )
    assert listed.stdout.split() == packaged_grids()

    out = _run(fresh / "bin" / "copycatch", "bench", "fmnist-quick", "--dry-run", cwd=tmp_path).stdout
    grid = load_grid(GRIDS / "fmnist-quick.yaml")
    assert f"grid fmnist-quick: {len(grid.cells)} cells in {len(grid.experiments)} experiment(s)" in out
    for name, cells in grid.experiments.items():
        assert f"  {name}: {len(cells)} cells" in out
    for cell in grid.cells:
        assert f"todo {cell.cell_id} " in out
