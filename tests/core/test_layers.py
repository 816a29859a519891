"""The import contracts in pyproject.toml hold on the real tree, and breaking a layer breaks them.

``lint-imports`` (import-linter) reads every import statically, lazy ones inside functions included.
The broken trees are copies of the package under ``tmp_path`` with one import added.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
if not LINT.is_file():
    LINT = Path(shutil.which("lint-imports") or LINT)
pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter not installed (pip install -e '.[test]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_real_tree_keeps_every_contract():
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"Contracts: (\d+) kept, 0 broken", res.stdout)
    assert int(re.search(r"Contracts: (\d+) kept", res.stdout).group(1)) >= 4


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "illume_kit", tmp_path / "illume_kit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


BREAKS = {
    # module that gains the import, the import (inside a function: lazy imports count), contract, what it names
    "train imports the cli": (
        "train/stages.py",
        "import illume_kit.cli.output",
        "Layers point one way",
        "illume_kit.train is not allowed to import illume_kit.cli",
    ),
    "eval imports train": (
        "eval/evaluate.py",
        "import illume_kit.train.stages",
        "Layers point one way",
        "illume_kit.eval is not allowed to import illume_kit.train",
    ),
    "plugins import model": (
        "plugins/decoders/vq.py",
        "import illume_kit.model.unified",
        "Layers point one way",
        "illume_kit.plugins is not allowed to import illume_kit.model",
    ),
    "core imports torch": (
        "core/recipe.py",
        "import torch",
        "core imports no torch",
        "illume_kit.core is not allowed to import torch",
    ),
    "siglip imports dualvitok": (
        "plugins/tokenizers/siglip/model.py",
        "import illume_kit.plugins.tokenizers.dualvitok.model",
        "Tokenizer plugins share code",
        "illume_kit.plugins.tokenizers.siglip is not allowed to import",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_breaking_a_layer_fails_naming_the_contract(tmp_path, case):
    module, stmt, contract, message = BREAKS[case]
    root = _copy(tmp_path)
    path = root / "illume_kit" / module
    path.write_text(path.read_text() + f"\n\ndef _break_the_layers():\n    {stmt}\n")
    res = lint(root)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert re.search(rf"{re.escape(contract)}.*BROKEN", out.replace("\n", " ")), out
    assert message in out.replace("\n", " "), out
    assert "Contracts:" in out and ", 1 broken" in out


def test_importing_every_core_module_loads_no_torch():
    modules = sorted(
        f"illume_kit.core.{p.stem}" for p in (ROOT / "illume_kit" / "core").glob("*.py") if p.stem != "__init__"
    )
    code = (
        f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "illume_kit.core.manifest" in modules and "illume_kit.core.build" in modules
