"""The core CLI verbs, run as a user would: exit codes, one-pass errors, no torch where promised."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def run(*args, check_torch=False):
    code = "import sys; from illume_kit.cli.main import main; rc = main(sys.argv[1:]); "
    if check_torch:
        code += "assert 'torch' not in sys.modules, 'imported torch'; "
    code += "sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=ROOT)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plugins"],
        ["list"],
        ["list", "tokenizers"],
        ["list", "data"],
        ["show", "detokenizer", "vq"],
        ["show", "data", "shapes"],
        ["schema"],
        ["recipes"],
    ],
)
def test_introspection_imports_no_torch(args):
    r = run(*args, check_torch=True)
    assert r.returncode == 0, r.stderr


def test_validate_imports_no_torch_and_reports_all_mistakes(tmp_path):
    r = run("validate", "recipes/examples/fsq_qwen2_tiny.yaml", check_torch=True)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "extends: [%s]\nname: bad\ntokenizer: {name: fsq-conf}\nbackbone: {name: qwen2, params: {hiden_size: 3}}\n"
        "detokenizer: {name: vq}\nrun: {seed: x}\n" % (ROOT / "recipes/base/tiny.yaml")
    )
    r = run("validate", str(bad))
    assert r.returncode == 2
    assert "3 problems" in r.stderr
    assert "Did you mean fsq-conv" in r.stderr and "Did you mean hidden_size" in r.stderr and "run.seed" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_checks_component_compatibility_without_torch():
    r = run("validate", "recipes/dualvitok_qwen2_tiny.yaml", "tokenizer=siglip", "detokenizer=vq", check_torch=True)
    assert r.returncode == 2, r.stderr
    err = " ".join(r.stderr.split())
    assert "detokenizer.name: detokenizer 'vq' requires pixel_decoder" in err and "tokenizer 'siglip'" in err
    assert "registered detokenizers that work with it: diffusion" in err and "Traceback" not in err
    r = run(
        "validate", "recipes/dualvitok_qwen2_tiny.yaml", "tokenizer=siglip", "detokenizer=diffusion", check_torch=True
    )
    assert r.returncode == 0, r.stderr


def test_show_lists_params_and_presets():
    r = run("show", "tokenizer", "fsq-conv")
    assert r.returncode == 0, r.stderr
    assert "levels" in r.stdout and "tiny" in r.stdout and "illume-kit-fsq-tokenizer 0.1.0" in r.stdout
    r = run("show", "tokenizer", "fsq-con")
    assert r.returncode == 2 and "Did you mean fsq-conv" in r.stderr


def test_plugins_lists_builtin_and_example():
    r = run("plugins", "--json")
    infos = {i["name"]: i for i in json.loads(r.stdout)}
    assert infos["builtin"]["dist"] == "illume-kit"
    assert infos["fsq"]["dist"] == "illume-kit-fsq-tokenizer" and infos["fsq"]["version"] == "0.1.0"
    assert "tokenizer:fsq-conv" in infos["fsq"]["components"]


def test_schema_is_json_schema():
    r = run("schema")
    schema = json.loads(r.stdout)
    assert "tokenizer" in schema["properties"] and schema["additionalProperties"] is False


def test_compose_save_and_inspect(tmp_path):
    out = tmp_path / "ck"
    r = run("compose", "recipes/examples/fsq_qwen2_tiny.yaml", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["components"]["tokenizer"]["name"] == "fsq-conv"
    sizes = {b["size"]: b for b in info["token_budget"]}
    assert sizes["256x256"]["codes"] == 256 and sizes["64x64"]["own"]
    r = run("inspect", str(out), "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["vocab_layout"] == info["vocab_layout"]
    assert again["components"]["backbone"]["parameters"] == info["components"]["backbone"]["parameters"]


def test_inspect_bad_folder_exit_2(tmp_path):
    r = run("inspect", str(tmp_path))
    assert r.returncode == 2 and "illume_kit.json is missing" in r.stderr


def test_data_is_the_dataset_role_wherever_a_role_is_taken():
    a, b = run("list", "data"), run("list", "dataset")
    assert a.returncode == 0 and a.stdout == b.stdout and "shapes" in a.stdout
    r = run("list", "datum")
    assert r.returncode == 2 and "unknown role 'datum'" in r.stderr and "Traceback" not in r.stderr


def test_recipes_lists_names_that_every_command_takes():
    r = run("recipes")
    assert r.returncode == 0, r.stderr
    assert "tokenizers/dualvitok_tiny_2x2" in r.stdout and "dualvitok_qwen2_tiny " in r.stdout
    assert "base/" not in r.stdout  # layers, not runnable recipes
    r = run("validate", "tokenizers/dualvitok_tiny_2x2", check_torch=True)
    assert r.returncode == 0, r.stderr
    assert "illume_kit/recipes/tokenizers/dualvitok_tiny_2x2.yaml" in r.stdout
