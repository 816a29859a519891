"""A plain (non-editable) install carries the shipped recipes: built as a wheel, installed into a
folder of its own and run from outside the checkout, `illume-kit recipes` lists them and a recipe
composes by name."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pip(*args, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
    )
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The package installed from a wheel into ``site`` (dependencies come from this interpreter)."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"  # a copy, so building leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "illume_kit", src / "illume_kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    )
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(tmp / "dist"), cwd=tmp)
    (wheel,) = (tmp / "dist").glob("illume_kit-*.whl")
    pip("install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    return tmp / "site"


def cli(site, *args):
    elsewhere = site.parent / "elsewhere"  # no recipes/ folder here: names must come from the package
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run(
        [str(site / "bin" / "illume-kit"), *args], capture_output=True, text=True, env=env, cwd=elsewhere
    )


def test_the_installed_package_is_the_one_that_runs(site):
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run(
        [sys.executable, "-c", "import illume_kit; print(illume_kit.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=site.parent,
    )
    assert Path(r.stdout.strip()).is_relative_to(site), r.stdout + r.stderr
    assert (site / "illume_kit" / "recipes" / "dualvitok_qwen2_tiny.yaml").is_file()
    assert not (site / "illume_kit" / "recipes").is_symlink()


def test_recipes_lists_the_shipped_recipes(site):
    r = cli(site, "recipes")
    assert r.returncode == 0, r.stderr
    shipped = sorted(
        p.relative_to(ROOT / "recipes").with_suffix("").as_posix()
        for p in (ROOT / "recipes").rglob("*.yaml")
        if "base" not in p.parts
    )
    assert len(shipped) >= 10
    for name in shipped:
        assert name in r.stdout, name


def test_a_shipped_recipe_validates_and_composes_by_name(site, tmp_path):
    r = cli(site, "validate", "tokenizers/dualvitok_tiny_2x2")  # extends ../base/*: layers ship too
    assert r.returncode == 0, r.stderr
    assert str(site / "illume_kit" / "recipes" / "tokenizers" / "dualvitok_tiny_2x2.yaml") in r.stdout
    r = cli(site, "validate", "recipes/dualvitok_qwen2_mllm_tiny.yaml")  # a checkout's path works as well
    assert r.returncode == 0, r.stderr
    r = cli(site, "compose", "dualvitok_qwen2_tiny", "-o", str(tmp_path / "composed"))
    assert r.returncode == 0, r.stderr
    assert "dualvitok" in r.stdout and "qwen2" in r.stdout
    assert (tmp_path / "composed" / "illume_kit.json").is_file()


def test_a_misspelt_name_suggests_the_shipped_one(site):
    r = cli(site, "compose", "dualvitok_qwen2_tinyy")
    assert r.returncode == 2
    assert "Did you mean dualvitok_qwen2_tiny" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


def test_the_installed_package_registers_its_lmms_eval_model(site):
    """The wheel's ``lmms_eval.models`` entry point is all lmms-eval needs to find ``illume_kit``."""
    pytest.importorskip("lmms_eval")
    code = (
        "from lmms_eval.models import get_model, list_available_models\n"
        "assert 'illume_kit' in list_available_models()\n"
        "cls = get_model('illume_kit')\n"
        "import sys; print(cls.__module__, sys.modules[cls.__module__].__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=site.parent)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    module, path = r.stdout.split()[-2:]
    assert module == "illume_kit.eval.lmms" and Path(path).is_relative_to(site)
