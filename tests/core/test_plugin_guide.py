"""docs/plugins.md is enough to write a plugin: its worked example, taken from the page, is registered
as an in-test plugin, composes with both detokenizers, passes the conformance suite and trains with
`illume-kit train`."""

import re
import sys
from pathlib import Path

import pytest
import torch

from illume_kit.testing import conformance, registered

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
FILE_BLOCK = re.compile(r"```(?:python|yaml)\n# file: (\S+)\n(.*?)```", re.DOTALL)


def guide_files() -> dict[str, str]:
    """The fenced blocks of the guide that start with ``# file: PATH``, by path."""
    return {path: f"# file: {path}\n{body}" for path, body in FILE_BLOCK.findall(GUIDE.read_text())}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    files = guide_files()
    assert {
        "patchvq/params.py",
        "patchvq/model.py",
        "patchvq/plugin.py",
        "tests/test_patchvq.py",
        "patchvq_tiny.yaml",
    } <= set(files), sorted(files)
    root = tmp_path_factory.mktemp("patchvq")
    (root / "patchvq").mkdir()
    (root / "patchvq" / "__init__.py").write_text("")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    sys.path.insert(0, str(root))
    try:
        import importlib

        module = importlib.import_module("patchvq.plugin")
        with registered(module, name="patchvq", dist="patchvq", version="0.1.0") as reg:
            yield root, reg
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "patchvq" or m.startswith("patchvq.")]:
            del sys.modules[name]


def test_registered_from_the_guide(plugin):
    _, reg = plugin
    spec = reg.get("tokenizer", "patchvq")
    assert spec.dist == "patchvq" and spec.provides == ("pixel_decoder", "code_maps")
    assert "tiny" in spec.load_presets()


def test_passes_the_conformance_suite_as_the_guide_runs_it(plugin):
    import importlib.util

    root, _ = plugin
    loc = importlib.util.spec_from_file_location("guide_test_patchvq", root / "tests" / "test_patchvq.py")
    mod = importlib.util.module_from_spec(loc)
    loc.loader.exec_module(mod)
    ran = []
    for role, test in (
        ("tokenizer", mod.test_tokenizer),
        ("detokenizer", mod.test_with_vq),
        ("detokenizer", mod.test_with_diffusion),
    ):
        for check in conformance.CHECKS[role]:
            test(check)
            ran.append(check.__name__)
    mod.test_registry_record_matches_the_class()
    assert "tokenizer_capabilities" in ran and ran.count("detokenizer_decode") == 2


DIFFUSION = [
    "detokenizer=diffusion",
    "detokenizer.preset=tiny",
    "detokenizer.params.output_scale=1",
    "detokenizer.params.num_inference_steps=2",
]


@pytest.mark.parametrize("detokenizer", [["detokenizer=vq"], DIFFUSION], ids=["vq", "diffusion"])
def test_composes_with_both_detokenizers(plugin, detokenizer):
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.compose import compose

    root, _ = plugin
    resolved = load_recipe(root / "patchvq_tiny.yaml", detokenizer)
    model = compose(resolved).eval()
    assert type(model.tokenizer).__name__ == "PatchVQ"
    with torch.no_grad():
        codes = model.tokenizer.encode(torch.rand(1, 3, 64, 64)).codes
        images = model.detokenizer.decode(codes, seed=0)
    assert codes["pixel"].shape == (1, 8, 8) and images.shape == (1, 3, 64, 64)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_trained_with_illume_kit_train(plugin, tmp_path):
    from illume_kit.cli.main import main
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.checkpoint import load_checkpoint
    from illume_kit.model.compose import compose

    root, _ = plugin
    overrides = [
        "train.stages.0.steps=4",
        "train.stages.0.batch_size=4",
        "train.stages.0.warmup_steps=1",
        "data.params.num_samples=16",
        f"run.output_dir={tmp_path / 'run'}",
    ]
    assert main(["train", str(root / "patchvq_tiny.yaml"), *overrides, "--quiet"]) == 0
    model, manifest = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert manifest["components"]["tokenizer"]["name"] == "patchvq"
    assert manifest["components"]["tokenizer"]["dist"] == "patchvq"
    fresh = compose(load_recipe(root / "patchvq_tiny.yaml", overrides))
    trained, init = model.tokenizer.encoder[0].weight, fresh.tokenizer.encoder[0].weight
    assert trained.shape == init.shape and not torch.equal(trained, init)  # the stage changed the weights
