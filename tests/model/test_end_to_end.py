"""The shipped FSQ + tiny Qwen2 recipe: shapes batch -> task samples -> loss; generate -> decode."""

import pytest
import torch

pytest.importorskip("illume_kit_fsq")


def test_fsq_recipe_trains_a_step_and_generates_decodable_images():
    from illume_kit.core.recipe import load_recipe
    from illume_kit.data.batching import collate
    from illume_kit.data.params import ShapesParams
    from illume_kit.data.shapes import ShapesDataset
    from illume_kit.model.compose import compose
    from illume_kit.model.objective import mllm_step_fn, trainable_parameters
    from illume_kit.model.sampler import answer, decode_images, edit_images, generate_images
    from illume_kit.model.tasks import TaskMixer

    model = compose(load_recipe("recipes/examples/fsq_qwen2_tiny.yaml"))
    ds = ShapesDataset(ShapesParams(image_size=64, num_samples=4, supersample=1))
    batch = collate([ds[i] for i in range(4)])
    step = mllm_step_fn(TaskMixer(seed=0))
    params = trainable_parameters(model, ["projectors", "new_embeddings"])
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    text_rows = model.backbone.model.get_input_embeddings().weight[: model.layout.text_vocab_size].detach().clone()
    out = step(model, batch, 0)
    out["loss"].backward()
    opt.step()
    assert torch.equal(model.backbone.model.get_input_embeddings().weight[: model.layout.text_vocab_size], text_rows)
    model.eval()
    codes = generate_images(model, batch["caption"][:2], [(64, 64), (32, 48)], cfg=2.0, seed=0)
    assert [tuple(c["pixel"].shape) for c in codes] == [(4, 4), (2, 3)]
    imgs = decode_images(model, codes[:1])  # 64 px only: the FSQ example's decode breaks unless h = w = code dim
    assert [tuple(i.shape) for i in imgs] == [(3, 64, 64)]
    assert all(0 <= float(i.min()) and float(i.max()) <= 1 for i in imgs)
    edits = edit_images(model, batch["image"][:1], [batch["edit"]["instruction"][0]], cfg=1.5)
    assert tuple(edits[0]["pixel"].shape) == (4, 4)
    assert len(answer(model, batch["image"][:2], ["how many shapes are there?"] * 2, max_new_tokens=3)) == 2
