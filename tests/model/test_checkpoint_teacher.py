"""A checkpoint loads without the folder its frozen teacher came from (its weights are inside)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from illume_kit.core.recipe import load_recipe
from illume_kit.model.checkpoint import load_checkpoint, save_checkpoint
from illume_kit.model.compose import compose
from illume_kit.plugins.tokenizers.dualvitok.model import DualViTok
from illume_kit.plugins.tokenizers.dualvitok.params import PRESETS
from illume_kit.plugins.tokenizers.teacher.model import SemanticTeacher
from illume_kit.plugins.tokenizers.teacher.params import TeacherParams

ROOT = Path(__file__).resolve().parents[2]


def test_siglip_checkpoint_loads_after_its_teacher_folder_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's relative teacher path, as `illume-kit train` writes it
    torch.manual_seed(3)
    SemanticTeacher(
        TeacherParams(image_size=64, vision_width=64, vision_layers=1, text_width=32, text_layers=1, text_heads=2)
    ).save("runs/t/teacher")
    resolved = load_recipe(
        ROOT / "recipes/tokenizers/siglip_tiny.yaml", ["tokenizer.params.teacher.pretrained=runs/t/teacher"]
    )
    model = compose(resolved).eval()
    folder = save_checkpoint(model, resolved, tmp_path / "elsewhere" / "ckpt")
    shutil.rmtree("runs")

    teacher = json.loads((folder / "illume_kit.json").read_text())["components"]["tokenizer"]["params"]["teacher"]
    assert teacher["pretrained"] is None and teacher["siglip"]["vision_width"] == 64
    assert "runs/t/teacher" in (folder / "recipe.yaml").read_text()  # the recipe stays as the user wrote it
    loaded, _ = load_checkpoint(folder)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want, got = model.tokenizer.encode(x), loaded.tokenizer.encode(x)
    assert torch.equal(want.codes["semantic"], got.codes["semantic"])
    assert torch.equal(want.features["semantic"], got.features["semantic"])


def test_qwen2vl_teacher_is_written_out_from_its_transformers_folder(tmp_path):
    from transformers import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    torch.manual_seed(4)  # sizes that differ from the params' own, as an official folder's config would
    vit = Qwen2VisionTransformerPretrainedModel(
        Qwen2VLVisionConfig(
            depth=1,
            embed_dim=32,
            num_heads=2,
            mlp_ratio=2,
            hidden_size=96,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            hidden_act="quick_gelu",
        )
    )
    vit.save_pretrained(tmp_path / "vit")
    torch.manual_seed(0)
    model = DualViTok(
        DualViTok.Params(
            **{**PRESETS["tiny"], "teacher": {**PRESETS["tiny"]["teacher"], "pretrained": str(tmp_path / "vit")}}
        )
    )
    params = model.checkpoint_params(model.params.model_dump(mode="json"))
    assert params["teacher"]["pretrained"] is None
    assert (params["teacher"]["depth"], params["teacher"]["embed_dim"], params["teacher"]["hidden_size"]) == (1, 32, 96)

    shutil.rmtree(tmp_path / "vit")
    rebuilt = DualViTok(DualViTok.Params(**params))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval().encode(x).features["semantic"], rebuilt.eval().encode(x).features["semantic"])
