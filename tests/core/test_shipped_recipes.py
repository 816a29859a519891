"""Every shipped recipe validates (found recursively, as torchtune should have), with no torch import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from illume_kit.core.footprint import ENV
from illume_kit.core.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "base" not in p.parts)


def test_recipes_found():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_shipped_recipe_validates(path, monkeypatch):
    if "illume_plus" in path.parts:  # official sizes train on GPU machines; the estimate would refuse them here
        monkeypatch.setenv(ENV, "1")
    if "examples" in path.parts:
        pytest.importorskip("illume_kit_fsq")
    if "sweeps" in path.parts:
        pytest.skip("sweep files are validated by the sweep tests")
    try:
        r = load_recipe(path)
    except RecipeError as exc:  # a recipe of released weights leaves their folders open (`???`)
        assert exc.problems and all("(???)" in p.message for p in exc.problems), str(exc)
        r = load_recipe(path, unset_missing=True)
    assert r.recipe.name
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# "))
    own = str(path.relative_to(ROOT))
    assert any(h.startswith("illume-kit ") and own in h for h in header), (
        f"{own}'s header must give the command that runs it"
    )
    assert any(h.startswith("Prerequisites:") for h in header), f"{own}'s header must name its prerequisites"


def test_validate_imports_no_torch():
    code = (
        "import sys; from illume_kit.core.recipe import load_recipe; "
        f"[load_recipe(p, unset_missing=True) for p in {[str(p) for p in RECIPES if 'examples' not in p.parts and 'sweeps' not in p.parts]!r}]; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    env = {**os.environ, ENV: "1"}  # the official-size recipes pass the memory estimate
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr


# unified-model recipe -> the tokenizer recipe whose checkpoint it loads
CHAINS = {
    "dualvitok_qwen2_mllm_tiny.yaml": "tokenizers/dualvitok_tiny_2x2.yaml",
    "vqgan_qwen2_mllm_tiny.yaml": "tokenizers/vqgan_tiny_2x2.yaml",
}


@pytest.mark.parametrize("mllm,tok", CHAINS.items())
def test_unified_recipe_builds_the_tokenizer_its_tokenizer_recipe_trains(mllm, tok):
    """The unified recipe loads the tokenizer recipe's checkpoint, so both must describe one network:
    same component and the same resolved params, apart from where the weights come from."""
    unified = load_recipe(ROOT / "recipes" / mllm)
    a, b = unified.components["tokenizer"], load_recipe(ROOT / "recipes" / tok).components["tokenizer"]
    assert (a.spec.name, a.preset) == (b.spec.name, b.preset)

    def arch(params):
        d = params.model_dump()
        if isinstance(d.get("teacher"), dict):
            d["teacher"].pop("pretrained", None)
        return d

    assert arch(a.params) == arch(b.params)
    assert unified.recipe.tokenizer.weights == f"runs/{Path(tok).stem}/checkpoint"


def test_the_2x2_dualvitok_writes_a_64px_image_as_4x4_codes_per_level():
    from illume_kit.model.compose import build_component

    r = load_recipe(ROOT / "recipes/tokenizers/dualvitok_tiny_2x2.yaml", ["tokenizer.params.teacher.pretrained=null"])
    c = r.components["tokenizer"]
    assert build_component(c.spec, c.params).grid(64, 64) == {"semantic": (4, 4), "pixel": (4, 4)}
