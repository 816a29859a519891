"""The pre-rendered params tables that let `show` skip pydantic: current, used, and never trusted stale."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from illume_kit.core import params_digest
from illume_kit.core.plugins import get_registry

ROOT = Path(__file__).resolve().parents[2]


def test_digest_file_is_current():
    live = json.loads(params_digest.dumps(params_digest.build(params_digest.builtin_specs())))
    stored = json.loads(params_digest.DIGEST.read_text())
    assert sorted(live) == sorted(stored), "run: python -m illume_kit.core.params_digest"
    stale = [k for k in live if live[k] != stored[k]]
    assert not stale, f"stale entries {stale}; run: python -m illume_kit.core.params_digest"
    # every built-in with a params model is covered, tokenizers and backbones included
    assert {"tokenizer/dualvitok", "tokenizer/vqgan", "backbone/qwen2", "detokenizer/diffusion"} <= set(stored)


def test_cached_entry_matches_live_render():
    spec = get_registry().get("backbone", "qwen2")
    entry = params_digest.cached(spec)
    assert entry is not None
    live = params_digest.render(spec)
    assert entry["fields"] == live["fields"] and entry["presets"] == live["presets"]
    assert [r[0] for r in entry["fields"]][:3] == list(spec.load_params().model_fields)[:3]


def test_changed_source_or_third_party_spec_is_rendered_live(monkeypatch):
    spec = get_registry().get("backbone", "qwen2")
    monkeypatch.setitem(params_digest._LOADED, "data", {params_digest.key(spec): {"fingerprint": "0" * 16}})
    assert params_digest.cached(spec) is None  # fingerprint of the files differs: not trusted
    monkeypatch.setitem(
        params_digest._LOADED, "data", {params_digest.key(spec): {"fingerprint": params_digest.fingerprint(spec)}}
    )
    assert params_digest.cached(spec) is not None
    assert params_digest.cached(replace(spec, plugin="someone-else")) is None
    assert params_digest.fingerprint(replace(spec, params="other_pkg.params:P")) is None


@pytest.mark.parametrize("role,name", [("tokenizer", "dualvitok"), ("backbone", "qwen2")])
def test_show_imports_neither_torch_nor_pydantic(role, name):
    code = (
        "import sys; from illume_kit.cli.main import main; rc = main(sys.argv[1:]); "
        "bad = [m for m in ('torch', 'pydantic') if m in sys.modules]; assert not bad, bad; sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "show", role, name],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert "params" in r.stdout and "presets" in r.stdout and "tiny" in r.stdout


def test_fingerprint_covers_the_illume_kit_modules_a_params_module_imports():
    spec = get_registry().get("tokenizer", "dualvitok")
    files = {f.relative_to(params_digest.PACKAGE).as_posix() for f in params_digest._source_files(spec)}
    # the shared base class and the teacher and discriminator params it imports: editing them must invalidate the entry
    assert files == {
        "plugins/tokenizers/dualvitok/params.py",
        "core/params.py",
        "plugins/tokenizers/gan_params.py",
        "plugins/tokenizers/common/params.py",
    }
