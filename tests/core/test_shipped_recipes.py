"""Every shipped recipe validates (found recursively, as torchtune should have), with no torch import."""

import subprocess
import sys
from pathlib import Path

import pytest

from illume_kit.core.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "base" not in p.parts)


def test_recipes_found():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_shipped_recipe_validates(path):
    if "examples" in path.parts:
        pytest.importorskip("illume_kit_fsq")
    if "sweeps" in path.parts:
        pytest.skip("sweep files are validated by the sweep tests")
    r = load_recipe(path)
    assert r.recipe.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# illume-kit "), f"{path.name} must start with the command that runs it"


def test_validate_imports_no_torch():
    code = ("import sys; from illume_kit.core.recipe import load_recipe; "
            f"[load_recipe(p) for p in {[str(p) for p in RECIPES if 'examples' not in p.parts and 'sweeps' not in p.parts]!r}]; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
