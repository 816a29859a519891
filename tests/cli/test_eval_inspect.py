"""`eval` says where it wrote its files and records its thread count; `inspect` budgets tokens at the
image size the checkpoint was trained at."""

import json
from pathlib import Path

import pytest
import torch

from illume_kit.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The default recipe composed at 96x96 images (untrained weights: eval only needs them to load)."""
    out = tmp_path_factory.mktemp("ck") / "checkpoint"
    assert (
        main(
            [
                "compose",
                str(ROOT / "recipes/dualvitok_qwen2_tiny.yaml"),
                "data.params.image_size=96",
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    return out


def test_eval_names_the_files_it_wrote_and_where(checkpoint, tmp_path, capsys):
    capsys.readouterr()
    (tmp_path / "old.txt").write_text("an earlier file, not written by this eval")
    assert main(["eval", str(checkpoint), "-n", "4", "-o", str(tmp_path), "--quiet"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"to {tmp_path}" in said
    assert "metrics.json" in said and "reconstructions.png" in said and "old.txt" not in said
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["files"] == ["metrics.json", "reconstructions.png"]
    assert all((tmp_path / f).is_file() for f in result["files"])
    assert result["output_dir"] == str(tmp_path)
    assert result["torch_threads"] == torch.get_num_threads()


def test_inspect_budgets_the_trained_image_size_first(checkpoint, capsys):
    capsys.readouterr()
    assert main(["inspect", str(checkpoint), "--json"]) == 0
    budget = json.loads(capsys.readouterr().out)["token_budget"]
    assert [b["size"] for b in budget] == ["96x96", "256x256", "512x512"]
    assert budget[0]["own"] and budget[0]["label"] == "trained size" and budget[0]["codes"] > 0
    assert not budget[1]["own"]
    assert main(["inspect", str(checkpoint)]) == 0
    assert "96x96 (trained size):" in capsys.readouterr().out
