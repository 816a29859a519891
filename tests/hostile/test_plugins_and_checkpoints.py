"""Hostile checkpoints, converter inputs and plugins.

Checkpoint cases copy the shipped tiny checkpoint into the scratch folder and corrupt the copy;
converter cases write the hostile file there; plugin cases install a plugin by a ``.dist-info``
folder on ``PYTHONPATH`` (no pip) or register one in-process.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import types
from pathlib import Path

import pytest

from illume_kit import hookimpl
from illume_kit.core.plugins import PluginManager
from illume_kit.core.registry import ComponentSpec, RecipeSource

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny"
IMAGE = ROOT / "checkpoints" / "scene.png"
MANIFEST = "illume_kit.json"


def copy_checkpoint(cwd: Path) -> Path:
    dst = cwd / "ck"
    shutil.copytree(SHIPPED, dst)
    return dst


def rewrite(ck: Path, change) -> None:
    data = json.loads((ck / MANIFEST).read_text())
    out = change(data)
    (ck / MANIFEST).write_text(json.dumps(data if out is None else out))


def _set(path: str, value):
    """A change that sets the dotted ``path`` of the manifest (list indices as numbers)."""

    def change(d):
        *head, last = path.split(".")
        node = d
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def _drop(path: str):
    def change(d):
        *head, last = path.split(".")
        node = d
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        del node[last]

    return change


def _shift_pixel_codebook(d):
    # a layout self-consistent in itself whose pixel codebook is not the tokenizer's
    cbs = d["vocab_layout"]["codebooks"]
    cbs[0]["size"] += 1
    cbs[1]["start"] += 1


# (id, change of the manifest's data, what the message must name)
MANIFEST_DEFECTS = [
    ("top-level-list", lambda d: [d], "the top level must be a mapping"),
    ("components-list", lambda d: d.update(components=list(d["components"].values())), "components"),
    ("record-without-role", _drop("components.tokenizer.role"), "components.tokenizer.role"),
    ("record-without-name", _drop("components.backbone.name"), "components.backbone.name"),
    ("record-is-a-string", _set("components.detokenizer", "vq"), "components.detokenizer"),
    ("unknown-role", _set("components.tokenizer.role", "wizard"), "components.tokenizer.role"),
    ("missing-params", _drop("components.backbone.params"), "components.backbone.params"),
    ("params-a-list", _set("components.tokenizer.params", [1, 2]), "components.tokenizer.params"),
    ("params-wrong-value", _set("components.backbone.params.hidden_size", "wide"), "components.backbone.params"),
    (
        "unknown-section",
        _set("components.wizard", {"name": "x", "role": "metric", "dist": "d", "params": {}}),
        "wizard",
    ),
    ("format-a-string", _set("format", "1"), "format"),
    ("layout-a-string", _set("vocab_layout", "garbage"), "vocab_layout"),
    ("layout-missing", _drop("vocab_layout"), "vocab_layout"),
    ("layout-size-a-string", _set("vocab_layout.text_vocab_size", "512"), "vocab_layout.text_vocab_size"),
    ("layout-negative-size", _set("vocab_layout.codebooks.0.size", -64), "vocab_layout.codebooks.0.size"),
    ("layout-overlapping-ranges", _set("vocab_layout.codebooks.1.start", 600), "codebooks.1.start"),
    ("layout-codebooks-a-mapping", _set("vocab_layout.codebooks", {"pixel": 64}), "vocab_layout.codebooks"),
    ("layout-not-the-components", _shift_pixel_codebook, "vocab_layout does not match its components"),
    ("model-options-bad", _set("model.resolution_step", 0), "model.resolution_step"),
]


@pytest.mark.parametrize("change,offender", [c[1:] for c in MANIFEST_DEFECTS], ids=[c[0] for c in MANIFEST_DEFECTS])
def test_inspect_refuses_a_bad_manifest(hostile, change, offender):
    ck = copy_checkpoint(hostile.cwd)
    rewrite(ck, change)
    hostile("inspect", "ck", offender=(offender, f"ck/{MANIFEST}"))


UNDERSTAND_DEFECTS = ["components-list", "record-without-role", "missing-params", "layout-overlapping-ranges"]


@pytest.mark.parametrize("defect", UNDERSTAND_DEFECTS)
def test_understand_refuses_a_bad_manifest(hostile, defect):
    _, change, offender = next(c for c in MANIFEST_DEFECTS if c[0] == defect)
    ck = copy_checkpoint(hostile.cwd)
    rewrite(ck, change)
    hostile("understand", "ck", IMAGE, "what is this?", offender=(offender, f"ck/{MANIFEST}"))


def test_a_very_deep_manifest_is_refused_before_parsing(hostile):
    ck = copy_checkpoint(hostile.cwd)
    d = json.loads((ck / MANIFEST).read_text())
    text = json.dumps(d)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    (ck / MANIFEST).write_text(text)
    hostile("inspect", "ck", offender=(f"ck/{MANIFEST}", "levels deep"))


def test_a_huge_manifest_is_refused_unread(hostile):
    ck = copy_checkpoint(hostile.cwd)
    with (ck / MANIFEST).open("w") as f:
        f.write('{"format": 1, "pad": "' + "x" * (5 * 1024 * 1024) + '"}')
    hostile("inspect", "ck", "--manifest-only", offender=(f"ck/{MANIFEST}", "bytes"))


def test_a_manifest_that_is_not_utf8(hostile):
    ck = copy_checkpoint(hostile.cwd)
    (ck / MANIFEST).write_bytes(b'{"format": 1, "created": "\xff\xfe"}')
    hostile("inspect", "ck", offender=(f"ck/{MANIFEST}", "UTF-8"))


def test_a_recipe_yaml_with_a_python_tag_is_refused_unrun(hostile):
    ck = copy_checkpoint(hostile.cwd)
    marker = hostile.cwd / "ran"
    (ck / "recipe.yaml").write_text(f"name: x\ndata: !!python/object/apply:os.system ['touch {marker}']\n")
    for verb in (("understand", "ck", IMAGE, "what?"), ("generate", "ck", "a cat", "-o", "out.png")):
        hostile(*verb, offender=("ck/recipe.yaml", "python/object/apply"))
    assert not marker.exists()
    assert not (hostile.cwd / "out.png").exists()


@pytest.mark.parametrize(
    "text,offender",
    [
        ("data: [1, 2]\n", "data must be a mapping"),
        ("data: {params: {image_size: big}}\n", "data.params.image_size"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
    ids=["data-a-list", "size-a-word", "top-level-list"],
)
def test_a_bad_checkpoint_recipe_is_an_error_not_a_default(hostile, text, offender):
    ck = copy_checkpoint(hostile.cwd)
    (ck / "recipe.yaml").write_text(text)
    hostile("understand", "ck", IMAGE, "what?", offender=("ck/recipe.yaml", offender))


def test_bad_sampling_options_in_the_checkpoint_recipe(hostile):
    ck = copy_checkpoint(hostile.cwd)
    with (ck / "recipe.yaml").open("a") as f:
        f.write("\n# appended\n")
    text = (ck / "recipe.yaml").read_text()
    assert "\neval:" in text
    text = text.replace("\neval:", "\neval_replaced:", 1) + "eval:\n  options:\n    temperature: hot\n"
    (ck / "recipe.yaml").write_text(text)
    hostile("generate", "ck", "a cat", "-o", "out.png", offender=("ck/recipe.yaml", "eval.options.temperature"))
    assert not (hostile.cwd / "out.png").exists()


def test_a_truncated_weight_file(hostile):
    ck = copy_checkpoint(hostile.cwd)
    w = ck / "backbone" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    hostile("inspect", "ck", offender=("backbone", "ck/backbone/model.safetensors", "corrupt"))


def test_a_weight_file_that_is_a_pickle(hostile):
    ck = copy_checkpoint(hostile.cwd)
    marker = hostile.cwd / "ran"
    (ck / "projectors" / "model.safetensors").write_bytes(pickle.dumps(RunsCode(marker)))
    hostile("inspect", "ck", offender=("projectors", "ck/projectors/model.safetensors"))
    assert not marker.exists()


def test_a_weight_file_of_other_shapes(hostile):
    ck = copy_checkpoint(hostile.cwd)
    shutil.copy(ck / "detokenizer" / "model.safetensors", ck / "projectors" / "model.safetensors")
    hostile("inspect", "ck", offender=("projectors", "does not match the component", "missing:"))


# ---------------------------------------------------------------- the converter


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_convert_refuses_a_pickle_with_code_and_never_runs_it(hostile):
    marker = hostile.cwd / "ran"
    (hostile.cwd / "evil.bin").write_bytes(pickle.dumps({"w": RunsCode(marker)}))
    r = hostile(
        "convert", "dualvitok-official", "evil.bin", "out", offender=("evil.bin", "will not run", "safetensors")
    )
    assert "weights_only" not in r.stdout + r.stderr
    assert not marker.exists() and not (hostile.cwd / "out").exists()


def test_convert_refuses_a_torch_archive_with_code(hostile):
    import torch

    marker = hostile.cwd / "ran"
    torch.save({"state_dict": {"w": RunsCode(marker)}}, hostile.cwd / "evil.pt")
    r = hostile("convert", "dualvitok-official", "evil.pt", "out", offender=("evil.pt", "code or objects"))
    assert "weights_only" not in r.stdout + r.stderr
    assert not marker.exists() and not (hostile.cwd / "out").exists()


@pytest.mark.parametrize(
    "name,data,offender",
    [
        ("noise.bin", bytes(range(256)) * 16, "neither a torch checkpoint"),
        ("empty.bin", b"", "is empty"),
        ("noise.safetensors", b"\x07" * 100, "not a readable .safetensors file"),
        ("zip", None, "a zip archive but not a torch checkpoint"),
    ],
    ids=["garbage", "empty", "garbage-safetensors", "foreign-zip"],
)
def test_convert_refuses_files_that_are_not_checkpoints(hostile, name, data, offender):
    src = hostile.cwd / name
    if data is None:
        import zipfile

        with zipfile.ZipFile(src, "w") as z:
            z.writestr("readme.txt", "not weights")
    else:
        src.write_bytes(data)
    hostile("convert", "dualvitok-official", name, "out", offender=(name, offender))
    assert not (hostile.cwd / "out").exists()


def test_convert_refuses_a_state_dict_of_another_network(hostile):
    import torch

    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, hostile.cwd / "other.bin")
    hostile("convert", "dualvitok-official", "other.bin", "out", offender=("other.bin", "unused keys: fc.weight"))
    assert not (hostile.cwd / "out").exists()


# ---------------------------------------------------------------- plugins

CLASH_PLUGIN = """
from illume_kit import hookimpl
from illume_kit.core.registry import ComponentSpec


@hookimpl
def illume_kit_components():
    return [
        ComponentSpec("tokenizer", "dualvitok", target="clashing_plugin:Nothing", summary="an impostor"),
        ComponentSpec("metric", "clash-metric", target="clashing_plugin:Nothing"),
    ]
"""

HALF_PLUGIN = """
from illume_kit import hookimpl
from illume_kit.core.registry import ComponentSpec


@hookimpl
def illume_kit_components():
    return [ComponentSpec("metric", "half-metric", target="half_plugin:Nothing")]


@hookimpl
def illume_kit_recipes():
    raise OSError("recipes folder missing")
"""


def install_fake_plugins(cwd: Path) -> dict:
    """Two distributions by .dist-info folders on PYTHONPATH: one clashing with the built-ins, one
    whose second hook raises."""
    site = cwd / "site"
    for dist, module, text in (
        ("clashing-plugin", "clashing_plugin", CLASH_PLUGIN),
        ("half-plugin", "half_plugin", HALF_PLUGIN),
    ):
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[illume_kit]\n{module.split('_')[0]} = {module}\n")
        (site / f"{module}.py").write_text(text)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def test_a_clashing_plugin_leaves_the_cli_working(hostile):
    env = install_fake_plugins(hostile.cwd)
    r = hostile("plugins", "--json", env=env, code=0)
    infos = {i["name"]: i for i in json.loads(r.stdout)}
    clash = infos["clashing"]
    assert clash["status"] == "conflict" and clash["dist"] == "clashing-plugin"
    assert "tokenizer 'dualvitok' withdrawn: also provided by illume-kit (builtin)" in clash["reason"]
    assert clash["components"] == ["metric:clash-metric"]
    half = infos["half"]
    assert half["status"] == "failed" and "recipes folder missing" in half["reason"] and half["components"] == []
    r = hostile("plugins", env=env, code=0)
    assert "conflict" in r.stdout and "failed" in r.stdout
    r = hostile("list", "metric", "--json", env=env, code=0)
    names = {row["name"] for row in json.loads(r.stdout)}
    assert "clash-metric" in names and "half-metric" not in names
    r = hostile("show", "tokenizer", "dualvitok", env=env, code=0)
    assert "impostor" not in r.stdout
    hostile("validate", ROOT / "recipes" / "dualvitok_qwen2_mllm_tiny.yaml", env=env, code=0)


def test_strict_makes_a_clash_an_error_naming_both(hostile):
    env = install_fake_plugins(hostile.cwd)
    hostile("--strict", "plugins", env=env, offender=("half-plugin", "recipes folder missing"))
    env["ILLUME_KIT_DISABLE_PLUGINS"] = "half"
    hostile("--strict", "plugins", env=env, offender=("tokenizer 'dualvitok'", "illume-kit", "clashing-plugin"))
    hostile("list", env={**env, "ILLUME_KIT_STRICT_PLUGINS": "1"}, offender=("clashing-plugin", "illume-kit"))


def _module(components=(), recipes=None, raise_in=None):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        if raise_in == "components":
            raise RuntimeError("components hook broke")
        return list(components)

    @hookimpl
    def illume_kit_recipes():
        if raise_in == "recipes":
            raise RuntimeError("recipes hook broke")
        return list(recipes or ())

    m.illume_kit_components, m.illume_kit_recipes = illume_kit_components, illume_kit_recipes
    return m


def _info(name, dist):
    from illume_kit.core.plugins import PluginInfo

    return PluginInfo(name, dist, "1.0")


def test_in_process_clash_between_third_parties_is_ranked_by_distribution():
    pm = PluginManager(entry_points=False)
    spec = ComponentSpec("detokenizer", "twin", target="x:y")
    pm.register(_module([spec, ComponentSpec("metric", "zz-only", target="x:y")]), _info("zz", "zz-dist"))
    pm.register(_module([spec]), _info("aa", "aa-dist"))
    reg = pm.build_registry()
    assert reg.get("detokenizer", "twin").dist == "aa-dist" and reg.has("metric", "zz-only")
    assert pm.infos["zz"].status == "conflict" and "also provided by aa-dist (aa)" in pm.infos["zz"].reason
    assert reg.get("detokenizer", "vq").dist == "illume-kit"


def test_in_process_failed_plugin_withdraws_everything_it_gave():
    pm = PluginManager(entry_points=False)
    pm.register(
        _module([ComponentSpec("metric", "gone", target="x:y")], raise_in="recipes"), _info("broken", "broken-dist")
    )
    reg = pm.build_registry()
    assert pm.infos["broken"].status == "failed" and "recipes hook broke" in pm.infos["broken"].reason
    assert not reg.has("metric", "gone") and pm.infos["broken"].components == []
    assert any("broken (broken-dist 1.0)" in f for f in reg.failed)


def test_in_process_bad_record_fails_the_plugin_and_the_rest_works():
    pm = PluginManager(entry_points=False)
    pm.register(
        _module([ComponentSpec("metric", "fine", target="x:y")], recipes=[RecipeSource("/tmp"), {"path": "/x"}]),
        _info("odd", "odd-dist"),
    )
    reg = pm.build_registry()
    assert pm.infos["odd"].status == "failed" and "RecipeSource records" in pm.infos["odd"].reason
    assert not reg.has("metric", "fine") and reg.has("tokenizer", "dualvitok")


def test_in_process_clash_of_an_alias_with_a_builtin_name():
    pm = PluginManager(entry_points=False)
    alias = ComponentSpec("backbone", "mine", target="x:y", aliases=("gpt2",))
    pm.register(_module([alias]), _info("al", "al-dist"))
    reg = pm.build_registry()
    assert reg.get("backbone", "gpt2").dist == "illume-kit" and not reg.has("backbone", "mine")
    assert "backbone 'gpt2' withdrawn" in pm.infos["al"].reason
    before = copy.deepcopy(pm.infos["al"].reason)
    pm.build_registry()  # a rebuild reports the clash once, not twice
    assert pm.infos["al"].reason == before
