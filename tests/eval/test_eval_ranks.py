"""`illume-kit eval` on another registered dataset (`--data NAME`), and over torchrun ranks: each rank
reconstructs a shard and the reduced numbers equal one process's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from illume_kit.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The default recipe composed at 64x64 (untrained: the numbers only need to be reproducible)."""
    out = tmp_path_factory.mktemp("ck") / "checkpoint"
    assert main(["compose", str(ROOT / "recipes/dualvitok_qwen2_tiny.yaml"), "-o", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven images of different sizes and colours in nested folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(7):
        h, w = 48 + 8 * i, 80 - 4 * i
        ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, 3)[None, None, :]
        pixels = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(sub / f"{i}.png")
    return root


def _eval(checkpoint, out, *extra):
    return main(["eval", str(checkpoint), "-o", str(out), "--quiet", *extra])


def test_eval_on_a_named_dataset_uses_its_images_at_the_recipes_size(checkpoint, folder, tmp_path, capsys):
    args = ["--data", "image-folder", "--data", f"root={folder}", "--split", "train", "-n", "5"]
    assert _eval(checkpoint, tmp_path, *args) == 0
    assert "samples of image-folder" in " ".join(capsys.readouterr().out.split())
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["dataset"] == "image-folder" and result["world_size"] == 1
    assert {"rec/psnr", "rec/ssim", "code/usage/semantic"} <= set(result["metrics"])
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.build import build_dataset

    resolved = load_recipe(checkpoint / "recipe.yaml")
    data = build_dataset(resolved, "train", "image-folder", root=str(folder))
    assert len(data) == 7 and tuple(data[0]["image"].shape) == (3, 64, 64)  # the recipe's image size
    assert tuple(
        build_dataset(resolved, "train", "image-folder", root=str(folder), image_size=32)[0]["image"].shape
    ) == (3, 32, 32)

    # another folder gives other numbers: the named dataset really is what was read
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(other / "flat.png")
    assert (
        _eval(checkpoint, tmp_path / "o", "--data", "image-folder", "--data", f"root={other}", "--split", "train") == 0
    )
    flat = json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]
    assert flat["rec/psnr"] != result["metrics"]["rec/psnr"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "image-foldr"], "image-folder"),  # unknown dataset: a close match offered
        (["--data", "image-folder"], "dataset 'image-folder': root: Field required"),
        (["--data", "image-folder", "--data", "rooot=x"], "valid keys: captions, image_size"),
        (["--data", "shapes", "--data", "fashion-mnist"], "--data names one dataset"),
    ],
)
def test_bad_named_dataset_is_one_message_with_status_2(checkpoint, tmp_path, capsys, args, needle):
    capsys.readouterr()
    assert _eval(checkpoint, tmp_path, "--split", "train", *args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert needle in err and "Traceback" not in err


def test_two_torchrun_ranks_give_the_single_process_numbers(checkpoint, folder, tmp_path):
    from illume_kit.testing.metric_weights import write_random_inception, write_random_lpips

    inception = write_random_inception(tmp_path / "inception.safetensors")
    lpips_vgg = write_random_lpips(tmp_path / "lpips.safetensors")
    args = ["--data", "image-folder", "--data", f"root={folder}", "--split", "train", "-n", "7", "--json"]
    args += ["--metrics", "rfid,lpips,psnr,ssim,code", "--metric-param", f"rfid.inception_weights={inception}"]
    args += ["--metric-param", "rfid.feature=64", "--metric-param", f"lpips.weights={lpips_vgg}"]
    assert _eval(checkpoint, tmp_path / "one", *args) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())

    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "illume_kit.cli.main", "eval", str(checkpoint), "-o", str(tmp_path / "two"), "--quiet", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"metrics"') == 1  # rank 0 alone reports
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    m1, m2 = one["metrics"], two["metrics"]
    assert {"rfid", "lpips", "rec/psnr", "rec/ssim", "code/usage/pixel"} <= set(m1) and set(m1) == set(m2)
    for k in m1:
        if k.startswith("perf/"):
            continue  # a time
        assert m2[k] == pytest.approx(m1[k], rel=1e-6, abs=1e-9), k
