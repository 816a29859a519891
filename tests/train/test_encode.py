"""`illume-kit encode` and the mllm option `codes`: a stage reading a store trains the loss it would have
encoded; a store of other tokenizer weights is refused; a killed encode resumes into the store one pass
writes; bad input ends with exit status 2 and one message."""

import json
import math
from pathlib import Path

import pytest
import torch

from illume_kit.cli.main import main

ROOT = Path(__file__).parents[2]
RECIPE = str(ROOT / "tests" / "fixtures" / "recipes" / "fsdp_mllm_tiny.yaml")
DATA = "num_samples=12"
STAGE = (
    "train.stages=[{name: mllm, target: mllm, trainable: [all], steps: 1, global_batch_size: 4, lr: 1.0e-3, "
    "log_every: 1, checkpoint_every: 100, options: {qa_turns: 2%s}}]"
)


def encode(out: Path, *extra: str) -> int:
    return main(["encode", RECIPE, *extra, "-o", str(out), "--data", DATA, "--quiet"])


def train(out: Path, codes: Path | None = None, *extra: str) -> int:
    stage = STAGE % (f", codes: {codes}" if codes else "")
    recipe = [RECIPE, "data.params.num_samples=12", "parallelism.strategy=ddp", f"run.output_dir={out}", stage]
    return main(["train", *recipe, *extra])


def first_loss(run: Path) -> dict:
    return json.loads((run / "stages" / "mllm" / "metrics.jsonl").read_text().splitlines()[0])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    assert encode(root / "fp32", "--features", "--dtype", "fp32") == 0
    assert encode(root / "bf16", "--features") == 0
    return root


@pytest.fixture(scope="module")
def on_the_fly(tmp_path_factory):
    run = tmp_path_factory.mktemp("fly") / "run"
    assert train(run) == 0
    return first_loss(run)


def test_a_stage_reading_codes_trains_the_loss_it_would_encode(stores, on_the_fly, tmp_path, capsys):
    manifest = json.loads((stores / "fp32" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["features"] == "fp32" and manifest["items"] == 12
    assert manifest["images"] == sum(s["images"] for s in manifest["shards"]) > 12  # images and edit targets
    assert manifest["tokenizer"]["name"] == "dualvitok" and len(manifest["tokenizer"]["sha256"]) == 64
    capsys.readouterr()
    assert train(tmp_path / "fp32", stores / "fp32") == 0
    err = capsys.readouterr().err
    assert f"codes from {stores / 'fp32'}: {manifest['images']} images with fp32 features" in err
    assert "images read from codes" in err and ", 0 not in it (encoded on the fly)" in err
    got = first_loss(tmp_path / "fp32")
    for key in ("loss", "und", "gen", "grad_norm"):
        assert abs(got[key] - on_the_fly[key]) <= 1e-6, (key, got, on_the_fly)
    # bf16 features: the codes are the same, the projected features round
    assert train(tmp_path / "bf16", stores / "bf16") == 0
    bf16 = first_loss(tmp_path / "bf16")
    assert math.isclose(bf16["loss"], on_the_fly["loss"], rel_tol=1e-2)
    assert bf16["loss"] != on_the_fly["loss"]


def test_codes_of_another_tokenizer_are_refused(stores, tmp_path, capsys):
    other = tmp_path / "other"
    assert encode(other, "run.seed=1") == 0  # the tokenizer initialised from another seed
    theirs = json.loads((other / "manifest.json").read_text())["tokenizer"]["sha256"]
    ours = json.loads((stores / "fp32" / "manifest.json").read_text())["tokenizer"]["sha256"]
    assert theirs != ours
    capsys.readouterr()
    assert train(tmp_path / "run", other) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"codes {other}: encoded by tokenizer 'dualvitok' with weights sha256 {theirs}" in err
    assert f"this model's tokenizer has weights sha256 {ours}" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "stages" / "mllm" / "metrics.jsonl").exists()


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for rec in json.loads((folder / "manifest.json").read_text())["shards"]:
        out.update(load_file(folder / rec["file"]))
    return out


def test_a_killed_encode_resumes_into_the_store_one_pass_writes(stores, tmp_path):
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset
    from illume_kit.model.compose import compose
    from illume_kit.train.encode import encode_store

    whole = tmp_path / "whole"
    assert encode(whole, "--shard-size", "5") == 0
    # a writer killed after two shards: what it leaves is complete shards and a manifest listing them
    resolved = load_recipe(RECIPE)
    data = build_dataset(resolved, "train", num_samples=12)
    section = json.loads((whole / "manifest.json").read_text())["data"]
    cut = tmp_path / "cut"
    partial = encode_store(
        compose(resolved),
        data,
        cut,
        tokenizer_name="dualvitok",
        data_section=section,
        split="train",
        source=RECIPE,
        shard_size=5,
        stop_after_shards=2,
    )
    assert not partial["complete"] and [s["images"] for s in partial["shards"]] == [5, 5]
    (cut / ".codes-00002.safetensors.tmp-999999999@elsewhere-x").write_bytes(b"torn")  # a dead writer's temporary
    assert encode(cut, "--shard-size", "5") == 0
    manifest = json.loads((cut / "manifest.json").read_text())
    assert manifest["complete"] and manifest["images"] == json.loads((whole / "manifest.json").read_text())["images"]
    a, b = _tensors(whole), _tensors(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a limit leaves the store partial; the next full pass completes it
    lim = tmp_path / "lim"
    assert encode(lim, "--limit", "3") == 0
    assert not json.loads((lim / "manifest.json").read_text())["complete"]
    assert encode(lim) == 0
    assert json.loads((lim / "manifest.json").read_text())["complete"] and _tensors(lim).keys() == a.keys()


def test_the_store_serves_what_the_tokenizer_gives(stores):
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset
    from illume_kit.model.code_store import CodeStore
    from illume_kit.model.compose import compose
    from illume_kit.model.sequence import EncodeCache, encode_images

    resolved = load_recipe(RECIPE)
    model = compose(resolved)
    image = build_dataset(resolved, "train", num_samples=12)[3]["image"]
    want = encode_images(model, [image])[0]
    store = CodeStore(stores / "bf16")
    got = store.get(EncodeCache.key(image), need_features=True)
    assert all(torch.equal(got["codes"][k], want["codes"][k]) for k in want["codes"])
    for k, v in want["features"].items():
        assert got["features"][k].dtype == torch.float32 and torch.allclose(got["features"][k], v, atol=0.05)
    assert store.get(EncodeCache.key(torch.zeros(3, 64, 64)), need_features=False) is None
    assert (store.hits, store.misses) == (1, 1)
    model.code_store = store  # encode_images reads the store before running the tokenizer
    again = encode_images(model, [image])[0]
    assert torch.equal(again["features"]["pixel"], got["features"]["pixel"]) and store.hits == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["encode", "nowhere.yaml", "-o", "{tmp}/c"], "nowhere.yaml: no such recipe file or checkpoint folder"),
        (["encode", RECIPE, "-o", "{tmp}/file"], "is a file; name a folder"),
        (["encode", RECIPE, "-o", "{tmp}/other"], "a folder with files but no manifest.json, so not a code store"),
        (["encode", RECIPE, "-o", "{tmp}/c", "--data", "colour=red"], "'colour' is not a param of dataset 'shapes'"),
        (["encode", RECIPE, "-o", "{tmp}/c", "--data", "nowhere.yaml"], "--data nowhere.yaml: no such recipe file"),
        (["encode", str(ROOT / "checkpoints"), "-o", "{tmp}/c"], "a folder without illume_kit.json"),
    ],
)
def test_bad_input_exits_2_with_one_message(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_a_store_continues_only_the_encode_that_started_it(stores, tmp_path, capsys):
    out = tmp_path / "c"
    assert encode(out, "--limit", "2") == 0
    capsys.readouterr()
    assert encode(out, "--features") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f'-o {out}: holds codes of another features (null; this encode: "bf16")' in err


def test_features_are_checked_against_the_module_the_model_reads_them_from(stores, tmp_path):
    """With model.input_encoder: separate the features are the copy's: a store of the tokenizer's features
    is refused for them, the copy's own store is not, and a stage reading codes only ignores features."""
    from illume_kit.core.recipe import load_recipe
    from illume_kit.model.code_store import CodeStore, CodeStoreError
    from illume_kit.model.compose import compose

    separate = compose(load_recipe(RECIPE, ["model.input_encoder=separate"]))
    shared = CodeStore(stores / "fp32")
    with pytest.raises(CodeStoreError, match="features of the tokenizer, but this model reads the input encoder's"):
        shared.check(separate, features=True)
    shared.check(separate, features=False)  # codes only: the same tokenizer weights
    own = tmp_path / "own"
    assert encode(own, "model.input_encoder=separate", "--features", "--limit", "2") == 0
    manifest = json.loads((own / "manifest.json").read_text())
    assert len(manifest["input_encoder"]["sha256"]) == 64
    CodeStore(own).check(separate, features=True)
    with torch.no_grad():
        next(separate.input_encoder.parameters()).add_(1.0)
    with pytest.raises(CodeStoreError, match="features of an input encoder with weights sha256"):
        CodeStore(own).check(separate, features=True)
    with pytest.raises(CodeStoreError, match="features of the input encoder, but this model reads the tokenizer's"):
        CodeStore(own).check(compose(load_recipe(RECIPE)), features=True)


def test_discrete_input_reads_codes_only(tmp_path, capsys):
    """A model reading code ids needs no features: a codes-only store serves every image, the loss the same."""
    discrete = "model.image_input=discrete"
    assert encode(tmp_path / "codes", discrete) == 0
    assert train(tmp_path / "fly", None, discrete) == 0
    capsys.readouterr()
    assert train(tmp_path / "read", tmp_path / "codes", discrete) == 0
    err = capsys.readouterr().err
    assert "images (codes only)" in err and ", 0 not in it (encoded on the fly)" in err
    assert first_loss(tmp_path / "read")["loss"] == first_loss(tmp_path / "fly")["loss"]
    # a continuous model reads features, which the store lacks: every image is encoded, and the stage says so
    assert train(tmp_path / "cont", tmp_path / "codes") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "the model reads continuous features, which the store lacks" in err and " 0 images read from codes" in err


def test_data_may_come_from_another_recipe(tmp_path):
    """--data OTHER.yaml encodes that recipe's `data:` section (KEY=VALUE flags override its params)."""
    other = str(ROOT / "recipes" / "dualvitok_qwen2_tiny.yaml")
    out = tmp_path / "c"
    assert main(["encode", RECIPE, "-o", str(out), "--data", other, "--data", "num_samples=3", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    from illume_kit.core.recipe import load_recipe

    theirs = load_recipe(other).components["data"].params
    assert manifest["data"]["params"] == {**theirs.model_dump(mode="json"), "num_samples": 3, "split": "train"}
    assert manifest["items"] == 3 and manifest["complete"]


@pytest.mark.slow  # three processes start; the fast suite resumes a cut store in-process (stop_after_shards)
def test_an_encode_killed_mid_pass_resumes(tmp_path):
    """kill -9 once the first shard is on disk; the same command again completes the store, equal to one pass."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["encode", RECIPE, "--data", "num_samples=40", "--shard-size", "4", "--quiet"]
    argv = [sys.executable, "-m", "illume_kit.cli.main", *args]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*argv, "-o", str(cut)], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (cut / "codes-00000.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = json.loads((cut / "manifest.json").read_text())
    assert not kept["complete"], "the encode finished before it was killed"
    assert subprocess.run([*argv, "-o", str(cut)], env=env).returncode == 0
    assert main([*args, "-o", str(tmp_path / "whole")]) == 0
    a, b = _tensors(tmp_path / "whole"), _tensors(cut)
    assert json.loads((cut / "manifest.json").read_text())["complete"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
