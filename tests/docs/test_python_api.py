"""Every ```python block of docs/python-api.md runs, in order, in one namespace.

The blocks run in a scratch folder with the repository's ``recipes`` and ``checkpoints`` linked in,
so their relative paths work and what they write (``runs/``, PNGs) lands in the scratch folder. The
blocks that use the shipped checkpoint are skipped, with the reason, when it is not in the checkout;
the ones before them still run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "python-api.md"
CHECKPOINT = ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_blocks_are_found():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    joined = "\n".join(blocks)
    for name in (
        "load_recipe",
        "compose",
        "save_checkpoint",
        "load_checkpoint",
        ".encode(",
        ".decode(",
        "answer(",
        "generate_images(",
        "edit_images(",
    ):
        assert name in joined, f"docs/python-api.md shows no {name}"


def test_python_api_snippets_run(tmp_path, monkeypatch):
    for name in ("recipes", "checkpoints"):
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "python_api_doc"}
    for i, block in enumerate(python_blocks(DOC.read_text())):
        if "checkpoints/" in block and not (CHECKPOINT / "illume_kit.json").is_file():
            pytest.skip(
                f"block {i + 1} and later use the shipped checkpoint {CHECKPOINT.relative_to(ROOT)}, "
                "which is not in this checkout"
            )
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)

    # what the blocks say they produce
    assert (tmp_path / "runs" / "api_demo" / "checkpoint" / "illume_kit.json").is_file()
    assert tuple(namespace["reconstruction"].shape) == (1, 3, 64, 64)
    from PIL import Image

    for png in ("circle.png", "edited.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size == (64, 64)
    assert len(namespace["drawn"]) == 2
