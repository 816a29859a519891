"""`illume-kit eval --metrics ... --metric-param ...` on a tiny tokenizer checkpoint, and eval.metric_params."""

import json

import pytest
import torch

from illume_kit.cli.main import main
from illume_kit.core.recipe import RecipeError, load_recipe

RECIPE = "recipes/tokenizers/vqgan_tiny.yaml"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random FID Inception-v3 and LPIPS-VGG weights files."""
    from illume_kit.testing.metric_weights import write_random_inception, write_random_lpips

    folder = tmp_path_factory.mktemp("weights")
    return write_random_inception(folder / "inception.safetensors"), write_random_lpips(folder / "lpips.safetensors")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, weights):
    """A tiny tokenizer checkpoint whose recipe asks for lpips with its weights file."""
    from illume_kit.model.checkpoint import save_checkpoint
    from illume_kit.model.compose import compose

    resolved = load_recipe(
        RECIPE,
        [
            "data.params.num_samples=16",
            "eval.num_samples=4",
            "eval.metrics=[rec/psnr,lpips]",
            f"eval.metric_params={{lpips: {{weights: {weights[1]}}}}}",
        ],
    )
    return save_checkpoint(compose(resolved), resolved, tmp_path_factory.mktemp("ckpt") / "checkpoint"), resolved


def test_eval_metrics_rfid_lpips_psnr_ssim(checkpoint, weights, tmp_path, capsys, monkeypatch):
    import lpips

    from illume_kit.data.build import build_dataset
    from illume_kit.model.checkpoint import load_checkpoint

    monkeypatch.setenv("COLUMNS", "200")
    ckpt, resolved = checkpoint
    argv = ["eval", str(ckpt), "--metrics", "rfid,lpips,psnr,ssim", "-o", str(tmp_path), "--quiet"]
    assert (
        main([*argv, "--metric-param", f"rfid.inception_weights={weights[0]}", "--metric-param", "rfid.feature=64"])
        == 0
    )
    table = capsys.readouterr().out
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("│")}
    assert list(rows) == ["rec/psnr", "rec/ssim", "rfid", "lpips"]
    assert "lower" in rows["rfid"] and "lower" in rows["lpips"]
    m = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert set(m) == {"rec/psnr", "rec/ssim", "rfid", "lpips"} and m["rfid"] > 0
    # lpips from the recipe's weights file, over the pass's reconstructions: the package's own number
    model, _ = load_checkpoint(ckpt)
    x = torch.stack([build_dataset(resolved, "val")[i]["image"] for i in range(4)])
    net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(weights[1])), strict=False)
    assert torch.equal(net.lins[0].model[1].weight, load_file(str(weights[1]))["lin0.model.1.weight"])
    with torch.no_grad():
        rec = model.detokenizer.decode(model.tokenizer.eval().encode(x).codes)
        direct = float(net.eval()(x, rec, normalize=True).mean())
    assert m["lpips"] == pytest.approx(direct, abs=1e-5)


def test_eval_without_metrics_reports_the_recipe_s_families(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    assert main(["eval", str(ckpt), "-o", str(tmp_path), "--quiet", "--json"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert "lpips" in m and "rec/psnr" in m and "code/usage/pixel" in m and "rfid" not in m


def test_bad_metric_names_and_params_are_one_message(checkpoint, capsys):
    ckpt, _ = checkpoint
    assert main(["eval", str(ckpt), "--metrics", "rfid,psnrr"]) == 2
    err = capsys.readouterr().err
    assert "--metrics: unknown metric 'psnrr'; known:" in err and "rfid" in err and "psnr, rec" in err
    assert main(["eval", str(ckpt), "--metrics", "rfid", "--metric-param", "rfid.weights=x"]) == 2
    err = capsys.readouterr().err
    assert "--metric-param rfid.weights: unknown key" in err and "inception_weights" in err
    assert main(["eval", str(ckpt), "--metrics", "rfid", "--metric-param", "rfd.feature=64"]) == 2
    assert "unknown metric family 'rfd'. Did you mean rfid" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--metrics", "rfid"]) == 2  # no inception weights anywhere
    err = capsys.readouterr().err
    assert "--metric-param rfid.inception_weights=PATH" in err and "Traceback" not in err


def test_recipe_metric_params_are_validated():
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE, ["eval.metric_params={lpips: {weight: x}, clipscore: {}}"])
    text = str(e.value)
    assert "eval.metric_params.lpips.weight: unknown key" in text and "Did you mean weights?" in text
    assert "eval.metric_params.clipscore: unknown metric family 'clipscore'. Did you mean clip-score" in text
    r = load_recipe(RECIPE, ["eval.metric_params={rfid: {feature: 64}}"]).recipe
    assert r.eval.metric_params == {"rfid": {"feature": 64}}
    assert "metric_params" not in load_recipe(RECIPE).recipe.model_dump()["eval"]  # frozen recipes unchanged


def test_the_reconstruction_pass_feeds_image_pairs_every_batch(checkpoint):
    from illume_kit.core.protocols import ImagePairs
    from illume_kit.data.build import build_dataset
    from illume_kit.eval.evaluate import reconstruction
    from illume_kit.model.checkpoint import load_checkpoint

    class Recorder:
        def __init__(self):
            self.batches = []

        def update(self, reference, candidate):
            self.batches.append((reference.clone(), candidate.clone()))

    ckpt, resolved = checkpoint
    model, _ = load_checkpoint(ckpt)
    ds = build_dataset(resolved, "val")
    rec = Recorder()
    assert isinstance(rec, ImagePairs)
    metrics = reconstruction(model, ds, 4, batch_size=3, quiet=True, pairs=[rec])
    assert [b[0].shape[0] for b in rec.batches] == [3, 1]
    originals = torch.cat([b[0] for b in rec.batches])
    assert torch.equal(originals, torch.stack([ds[i]["image"] for i in range(4)]))
    decoded = torch.cat([b[1] for b in rec.batches])
    assert decoded.shape == originals.shape
    mse = float(((decoded.clamp(0, 1) - originals) ** 2).mean())
    assert mse == pytest.approx(metrics["rec/mse"], rel=0.05)  # the pairs the rec/* numbers come from


@pytest.mark.slow  # two processes that each load the checkpoint and build both networks
def test_evaluate_over_two_ranks_gives_the_one_process_rfid_and_lpips(checkpoint, weights, tmp_path):
    """Each rank reconstructs its shard; rfid and lpips reduce over the gloo group (no torchrun: file rendezvous)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from illume_kit.eval.evaluate import evaluate

    ckpt, _ = checkpoint
    inception, lpips_weights = str(weights[0]), str(weights[1])
    params = {"rfid": {"inception_weights": inception, "feature": 64}, "lpips": {"weights": lpips_weights}}
    names = ["rfid", "lpips", "rec/psnr", "rec/ssim"]
    single = evaluate(ckpt, output=tmp_path / "one", quiet=True, metrics=names, metric_params=params)["metrics"]
    script = Path(__file__).parents[1] / "eval" / "image_metrics_rank_script.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "ranks.json"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                "2",
                str(tmp_path / "rdv"),
                "eval",
                str(ckpt),
                inception,
                lpips_weights,
                str(out),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    two = json.loads(out.read_text())
    assert set(two) == set(single) == set(names)
    for k in names:
        assert two[k] == pytest.approx(single[k], rel=1e-5, abs=1e-9), k
