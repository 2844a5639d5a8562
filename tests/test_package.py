"""The release: `python -m build` makes a wheel and an sdist; the wheel installs into a clean virtualenv whose
`selfsup --help` and `--version` work, its metadata lists the project's dependencies, and the sdist is complete
(a wheel builds from it alone)."""

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import selfsup

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd, cwd="/", timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools) is the one installed here; nothing is downloaded.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
    return out


def test_wheel_installs_into_a_clean_virtualenv_and_runs(dist, tmp_path):
    [wheel] = dist.glob("selfsup-*.whl")
    assert wheel.name.startswith(f"selfsup-{selfsup.__version__}-py3-none-any")
    venv = tmp_path / "clean"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # --no-deps: the check is the package itself (its files, entry point and metadata), not the download of torch.
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel)
    help_text = _run(venv / "bin" / "selfsup", "--help")
    for command in ("pretrain", "eval", "plot", "bench", "demo"):
        assert command in help_text
    # From another folder, so that this checkout is not what Python imports.
    assert _run(venv / "bin" / "selfsup", "--version").strip() == f"selfsup {selfsup.__version__}"
    installed = _run(python, "-c", "import selfsup, pathlib; print(pathlib.Path(selfsup.__file__).parent)").strip()
    assert installed.startswith(str(venv))  # the wheel's copy, not this checkout


def test_wheel_metadata_matches_pyproject(dist):
    [wheel] = dist.glob("selfsup-*.whl")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"selfsup-{selfsup.__version__}.dist-info/METADATA").decode()
        names = z.namelist()
        entry = z.read(f"selfsup-{selfsup.__version__}.dist-info/entry_points.txt").decode()
    required = [line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
    plain = {re.split(r"[<>=;\[ ]", r)[0] for r in required if "extra ==" not in r}
    assert plain == {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]}
    assert any("wandb" in r and 'extra == "wandb"' in r for r in required)
    for classifier in project["classifiers"]:
        assert f"Classifier: {classifier}" in meta
    assert "Project-URL: Source, " in meta and "License-Expression: MIT" in meta
    assert f"selfsup-{selfsup.__version__}.dist-info/licenses/LICENSE" in names
    assert "selfsup = selfsup.cli:main" in entry
    modules = {n for n in names if n.endswith(".py")}
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "selfsup").rglob("*.py")}
    assert modules == expected  # every module ships, nothing else (no tests, examples or benchmarks)


def test_sdist_is_complete(dist, tmp_path):
    [sdist] = dist.glob("selfsup-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    [root] = tmp_path.glob("selfsup-*")
    for name in ("pyproject.toml", "README.md", "LICENSE", "selfsup/cli.py", "selfsup/engine/loop.py"):
        assert (root / name).is_file(), name
    out = tmp_path / "rebuilt"
    _run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", out, root)
    assert len(list(out.glob("selfsup-*.whl"))) == 1
