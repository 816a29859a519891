"""The jsonl datasets (conversations, captions, edits) on the scikit-image corpus: items of the right
shape, and a clear message naming file and line for every kind of bad record; skip_bad counts."""

import json
import shutil
import warnings

import pytest
import torch

pytest.importorskip("skimage")

from illume_kit.data.jsonl import CaptionsDataset, ConversationsDataset, EditsDataset  # noqa: E402
from illume_kit.data.params import CaptionsParams, ConversationsParams, EditsParams  # noqa: E402
from illume_kit.testing.corpus import write_corpus  # noqa: E402

KINDS = {
    "conversations": (ConversationsDataset, ConversationsParams),
    "captions": (CaptionsDataset, CaptionsParams),
    "edits": (EditsDataset, EditsParams),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def copy(corpus, tmp_path):
    """A writable copy of the corpus, for tests that damage it."""
    shutil.copytree(corpus["root"], tmp_path / "c")
    return {k: tmp_path / "c" / v.relative_to(corpus["root"]) for k, v in corpus.items()}


def build(kind, path, **params):
    cls, Params = KINDS[kind]
    return cls(Params(path=str(path), **params))


def rewrite(path, n, fn):
    """Replace line ``n`` (1-based) of a jsonl file by ``fn(record)``."""
    lines = path.read_text().splitlines()
    lines[n - 1] = json.dumps(fn(json.loads(lines[n - 1])))
    path.write_text("\n".join(lines) + "\n")


def test_corpus_has_a_few_dozen_real_images_and_matching_records(corpus):
    pngs = sorted((corpus["root"] / "images").glob("*.png"))
    assert 30 <= len(pngs) <= 60
    for kind in KINDS:
        assert len(corpus[kind].read_text().splitlines()) == len(pngs)
    # real photographs: not flat, and not two alike
    import numpy as np
    from PIL import Image

    arrays = [torch.from_numpy(np.asarray(Image.open(p).convert("L"), dtype=np.float32)) for p in pngs[:6]]
    assert all(a.std() > 10 for a in arrays)
    assert len({round(float(a.mean()), 3) for a in arrays}) == len(arrays)


@pytest.mark.parametrize("size", [32, 64])
def test_each_dataset_serves_its_task_fields_at_image_size(corpus, size):
    conv = build("conversations", corpus["conversations"], image_size=size)
    item = conv[0]
    assert item["image"].shape == (3, size, size) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["qa"] == [
        ("What does the picture show?", "an astronaut"),
        ("Is it in colour or grayscale?", "colour"),
        ("Which part of the photograph is this?", "the whole picture"),
    ]
    assert "caption" not in item and "edit" not in item

    caps = build("captions", corpus["captions"], image_size=size)
    item = caps[3]
    assert item["image"].shape == (3, size, size)
    assert item["caption"] == "the whole picture of a grayscale photograph of a cameraman"
    assert "qa" not in item and "edit" not in item

    edits = build("edits", corpus["edits"], image_size=size)
    item = edits[0]
    assert item["image"].shape == item["edit"]["image"].shape == (3, size, size)
    assert item["edit"]["instruction"] == "flip the image horizontally"
    assert torch.allclose(item["edit"]["image"], item["image"].flip(-1), atol=0.02)  # a mirrored source
    assert "qa" not in item and "caption" not in item
    assert len(conv) == len(caps) == len(edits) >= 30


def test_the_mixer_draws_each_dataset_s_own_task():
    from illume_kit.model.tasks import TaskMixer

    mixer = TaskMixer.__new__(TaskMixer)
    mixer.weights = {"und": 1.0, "t2i": 1.0, "edit": 1.0}
    assert mixer._tasks_for({"image": 0, "qa": [("q", "a")]}) == ["und"]
    assert mixer._tasks_for({"image": 0, "caption": "c"}) == ["t2i"]
    assert mixer._tasks_for({"image": 0, "edit": {"instruction": "i", "image": 0}}) == ["edit"]


def test_fields_are_mapped_by_name(copy):
    path = copy["captions"]
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({"file": r["image"], "text": r["caption"]}) + "\n" for r in recs))
    ds = build("captions", path, fields={"image": "file", "caption": "text"})
    assert ds[1]["caption"] == recs[1]["caption"]
    with pytest.raises(ValueError, match=rf"captions: {path}:1: the record has no 'image' field \(fields.image"):
        build("captions", path)


def test_image_root_and_splits(corpus, tmp_path):
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(corpus["captions"], moved)
    with pytest.raises(ValueError, match=rf"captions: {moved}:1: image 'images/astronaut_whole.png' not found"):
        build("captions", moved)
    whole = build("captions", moved, image_root=str(corpus["root"]))
    parts = [
        build("captions", moved, image_root=str(corpus["root"]), split=s, val_fraction=0.3, test_fraction=0.2)
        for s in ("train", "val", "test")
    ]
    files = [{e["image"] for e in p.entries} for p in parts]
    assert all(files) and sum(map(len, files)) == len(whole)
    assert set.union(*files) == {e["image"] for e in whole.entries}
    with pytest.raises(ValueError, match=r"split 'val' .* has no usable records .* set data.params.val_fraction"):
        build("captions", moved, image_root=str(corpus["root"]), split="val")


BAD = {
    "missing image": (
        "captions",
        lambda r: {**r, "image": "images/nowhere.png"},
        r"image 'images/nowhere.png' not found",
    ),
    "record without the mapped field": (
        "edits",
        lambda r: {k: v for k, v in r.items() if k != "instruction"},
        r"the record has no 'instruction' field \(fields.instruction",
    ),
    "conversation without <image>": (
        "conversations",
        lambda r: {
            **r,
            "conversations": [{**t, "value": t["value"].replace("<image>", "")} for t in r["conversations"]],
        },
        r"an image record whose conversation has no <image> in a human turn",
    ),
    "conversation without an answer": (
        "conversations",
        lambda r: {**r, "conversations": r["conversations"][:1]},
        r"the conversation has no human turn followed by an answer",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_record_is_named_by_file_and_line(copy, case):
    kind, damage, message = BAD[case]
    rewrite(copy[kind], 5, damage)
    with pytest.raises(ValueError, match=rf"^{kind}: {copy[kind]}:5: {message}"):
        build(kind, copy[kind])


def test_a_corrupt_image_is_named_by_file_and_line(copy):
    (copy["root"] / "images" / "chelsea_left.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = copy["root"] / "edited" / "coffee_whole.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"^captions: {copy['captions']}:8: image 'images/chelsea_left.png' is"):
        build("captions", copy["captions"])
    rewrite(copy["edits"], 8, lambda r: {**r, "source": "images/astronaut_whole.png"})
    with pytest.raises(ValueError, match=rf"^edits: {copy['edits']}:10: image 'edited/coffee_whole.png' is corrupt"):
        build("edits", copy["edits"])


def test_skip_bad_goes_past_at_most_n_bad_records_and_counts_them(copy):
    path = copy["captions"]
    total = len(path.read_text().splitlines())
    for n in (2, 7):
        rewrite(path, n, lambda r: {**r, "image": "images/nowhere.png"})
    with pytest.raises(ValueError, match=rf"captions: {path}:7: .* \(bad record 2, past skip_bad=1\)"):
        build("captions", path, skip_bad=1)
    with pytest.warns(
        UserWarning, match=rf"captions: {path}: skipped 2 bad record\(s\) \(skip_bad=2\); first: .*:2:"
    ) as got:
        ds = build("captions", path, skip_bad=2)
    assert len(got) == 1 and len(ds) == total - 2 and ds.bad == 2
    assert [e["line"] for e in ds.entries] == [n for n in range(1, total + 1) if n not in (2, 7)]


def test_text_only_and_multi_image_conversations_are_left_out_and_counted(copy):
    path = copy["conversations"]
    total = len(path.read_text().splitlines())
    with path.open("a") as f:
        turns = [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]
        f.write(json.dumps({"conversations": turns}) + "\n")
        f.write(json.dumps({"conversations": turns}) + "\n")
        two = ["images/astronaut_whole.png", "images/camera_whole.png"]
        f.write(json.dumps({"image": two, "conversations": turns}) + "\n")
    with pytest.warns(UserWarning, match=r"left out 1 multi-image record\(s\), 2 text-only record\(s\)") as got:
        ds = build("conversations", path)
    assert len(got) == 1 and len(ds) == total and ds.left_out == {"text-only record(s)": 2, "multi-image record(s)": 1}


def test_a_clean_corpus_loads_without_warnings(corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in KINDS:
            build(kind, corpus[kind])
