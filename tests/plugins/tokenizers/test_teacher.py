import json

import pytest
import torch
from pydantic import ValidationError

from illume_kit.data.params import ShapesParams
from illume_kit.data.shapes import ShapesDataset
from illume_kit.plugins.tokenizers.teacher.model import SemanticTeacher
from illume_kit.plugins.tokenizers.teacher.params import PRESETS, TeacherParams

SMALL = dict(
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    text_width=64,
    text_layers=1,
    embed_dim=64,
    context_length=16,
)


def small(seed=0, **kw):
    torch.manual_seed(seed)
    return SemanticTeacher(TeacherParams(**{**SMALL, **kw}))


def retrieval(m, x, caps):
    with torch.no_grad():
        return (m.logits(x, caps).argmax(-1) == torch.arange(len(caps))).float().mean().item()


def test_presets_validate_and_official_has_vit_b16_size():
    for values in PRESETS.values():
        TeacherParams(**values)
    with torch.device("meta"):
        m = SemanticTeacher(TeacherParams(**PRESETS["official"]))
    n = sum(p.numel() for p in m.clip.visual.parameters())
    assert 85e6 < n < 88e6, n  # ViT-B/16: 86M
    assert m.feature_dim == 768 and m.grid(224, 224) == (14, 14)


def test_patch_grid_matches_open_clip_and_follows_image_size():
    m = small().eval()
    x = torch.rand(2, 3, 32, 32)
    feats = m.encode_image(x)
    assert feats.shape == (2, 4, 4, 64)
    ref = m.clip.visual.forward_intermediates(
        m._prepare(x), indices=1, normalize_intermediates=True, intermediates_only=True
    )["image_intermediates"][-1]
    assert torch.allclose(feats, ref.permute(0, 2, 3, 1), atol=1e-5)
    assert m.encode_image(torch.rand(1, 3, 24, 48)).shape == (1, 3, 6, 64)
    assert m.encode_image(torch.rand(1, 3, 30, 33)).shape == (1, 3, 4, 64)  # partial patches dropped
    with pytest.raises(ValueError, match="patch size 8"):
        m.encode_image(torch.rand(1, 3, 4, 32))


def test_siglip_training_lifts_retrieval_above_chance():
    ds = ShapesDataset(ShapesParams(num_samples=8, max_objects=1, edits=False, image_size=32))
    items = [ds[i] for i in range(8)]
    x, caps = torch.stack([it["image"] for it in items]), [it["caption"] for it in items]
    assert len(set(caps)) == 8
    m = small()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        out = m.loss(x, caps)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.3 * first
    assert retrieval(m, x, caps) >= 0.5  # chance: 1/8


def test_save_load_round_trip(tmp_path):
    m = small(seed=3).eval()
    x, caps = torch.rand(2, 3, 32, 32), ["a red circle at the top left", "a small blue star at the center"]
    path = m.save(tmp_path / "teacher")
    assert json.loads((path / "config.json").read_text())["params"]["vision_width"] == 64
    n = SemanticTeacher.load(path).eval()
    assert n.params == m.params
    assert torch.equal(n.encode_image(x), m.encode_image(x))
    assert torch.equal(n.logits(x, caps), m.logits(x, caps))
    m.save(path)  # overwriting an existing folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_load_errors_and_freeze(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SemanticTeacher.load(tmp_path)
    m = small().freeze()
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError, match="captions"):
        m.loss(torch.rand(2, 3, 32, 32), ["one caption"])


def test_params_validation():
    with pytest.raises(ValidationError, match="smaller than patch_size"):
        TeacherParams(image_size=12, patch_size=16)
    assert TeacherParams(image_size=384, patch_size=14).image_size == 384  # SigLIP so400m/14
    with pytest.raises(ValidationError):
        TeacherParams(hf_tokenizer="timm/ViT-B-16-SigLIP")


def test_params_schema_and_registry_record():
    from illume_kit.core.plugins import get_registry
    from illume_kit.testing.conformance import check_params_schema

    check_params_schema(SemanticTeacher)
    spec = get_registry().get("teacher", "siglip-teacher")
    assert spec.load() is SemanticTeacher and spec.load_params() is TeacherParams
    assert {"tiny", "official"} <= set(spec.load_presets())


def test_region_embedding_of_the_whole_image_is_the_image_embedding():
    m = small().eval()
    x = torch.rand(2, 3, 32, 32)
    whole = [[{"box": (0.0, 0.0, 1.0, 1.0), "text": "all"}]] * 2
    emb, texts = m.embed_regions(x, whole)
    assert texts == ["all", "all"]
    assert torch.allclose(emb, m.embed_image(x), atol=1e-5)  # vision_pool avg: the same pooling
    # a box is the mean of the patches whose centres it holds: the top-left quarter = 2x2 patches
    quarter, _ = m.embed_regions(x[:1], [[{"box": (0.0, 0.0, 0.5, 0.5), "text": "q"}]])
    ref = m.encode_image(x[:1])[0, :2, :2].reshape(4, -1).mean(0) @ m.clip.visual.proj
    assert torch.allclose(quarter[0], torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="region lists"):
        m.embed_regions(x, whole[:1])
    with pytest.raises(ValueError, match="patch centre"):
        m.embed_regions(x[:1], [[{"box": (0.0, 0.0, 0.01, 0.01), "text": "speck"}]])


def test_region_loss_makes_each_cell_hold_its_own_object():
    """Trained on images alone, a cell's pooled patches do not name what is in it; with the region
    loss they do (held-out scenes)."""
    data = ShapesDataset(
        ShapesParams(
            num_samples=64, grid=2, max_objects=2, varied_background=False, jitter=0.0, edits=False, image_size=32
        )
    )
    items = [data[i] for i in range(64)]
    x = torch.stack([it["image"] for it in items])
    caps, regions = [it["caption"] for it in items], [it["regions"] for it in items]

    def cell_accuracy(m):
        with torch.no_grad():
            return m.region_loss(x[48:], regions[48:])[1].item()

    scores = {}
    for weight in (0.0, 1.0):
        m = small(region_weight=weight)
        opt = torch.optim.Adam(m.parameters(), lr=2e-3)
        for _step in range(40):
            out = m.loss(x[:48], caps[:48], regions[:48])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        assert ("region_loss" in out) == (weight > 0)
        scores[weight] = cell_accuracy(m.eval())
    assert scores[1.0] > scores[0.0] + 0.2, scores
