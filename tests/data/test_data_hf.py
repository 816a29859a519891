"""The task kinds read from a Hugging Face ``datasets`` folder and from parquet files (format: hf) on
the scikit-image corpus: the same items as the jsonl form, images decoded per item, and a clear
message naming file and row for every kind of bad row; skip_bad counts; splits disjoint."""

import json
import pickle
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("datasets")

import datasets  # noqa: E402
import pyarrow.parquet  # noqa: E402

from illume_kit.data import hf as hf_module  # noqa: E402
from illume_kit.data.hf import HFTaskDataset, quiet_datasets  # noqa: E402
from illume_kit.data.jsonl import CaptionsDataset, ConversationsDataset, EditsDataset  # noqa: E402
from illume_kit.data.params import CaptionsParams, ConversationsParams, EditsParams  # noqa: E402
from illume_kit.data.records import BadRecord  # noqa: E402
from illume_kit.testing.corpus import IMAGE_KEYS, PARQUET_FILES, SHARDS, write_corpus_forms  # noqa: E402

PARAMS = {"conversations": ConversationsParams, "captions": CaptionsParams, "edits": EditsParams}
JSONL = {"conversations": ConversationsDataset, "captions": CaptionsDataset, "edits": EditsDataset}


@pytest.fixture(autouse=True)
def local_cache(tmp_path_factory, monkeypatch):
    """parquet is converted into datasets' cache: a temporary one, not the user's."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus_forms(tmp_path_factory.mktemp("corpus"))


def build(kind, path, **params):
    return HFTaskDataset(kind, PARAMS[kind](path=str(path), format="hf", **params))


def write(rows, path, kind, form="hf", images=True):
    """Rows (image columns as {"bytes", "path"} dicts, or paths) as a datasets folder or one parquet file."""
    with quiet_datasets():
        ds = datasets.Dataset.from_list(rows)
        if images:
            for role in IMAGE_KEYS[kind]:
                ds = ds.cast_column(role, datasets.Image())
        if form == "hf":
            ds.save_to_disk(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(path))
    return path


def all_rows(corpus, kind):
    ds = datasets.load_from_disk(str(corpus["hf"][kind]))
    for role in IMAGE_KEYS[kind]:
        ds = ds.cast_column(role, datasets.Image(decode=False))
    return ds.to_list()


def test_the_corpus_holds_the_jsonl_records_in_each_form(corpus):
    for kind in PARAMS:
        n = len(corpus["jsonl"][kind].read_text().splitlines())
        assert len(datasets.load_from_disk(str(corpus["hf"][kind]))) == n >= 30
        files = sorted(corpus["parquet"][kind].glob("*.parquet"))
        assert len(files) == PARQUET_FILES
        assert sum(pyarrow.parquet.read_metadata(f).num_rows for f in files) == n


def test_the_corpus_tar_shards_hold_each_record_and_its_image_members(corpus):
    root = corpus["jsonl"]["edits"].parent
    for kind in PARAMS:
        recs = [json.loads(x) for x in corpus["jsonl"][kind].read_text().splitlines()]
        shards = sorted(corpus["webdataset"][kind].glob("*.tar"))
        assert len(shards) == SHARDS
        members = {}
        for shard in shards:
            with tarfile.open(shard) as tar:
                members |= {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert len(members) == len(recs) * (1 + len(IMAGE_KEYS[kind]))
        for rec in (recs[0], recs[-1]):
            key = Path(rec[IMAGE_KEYS[kind][0]]).stem
            meta = json.loads(members[f"{key}.json"])
            for role in IMAGE_KEYS[kind]:
                assert meta[role] == f"{role}.png"
                assert members[f"{key}.{role}.png"] == (root / rec[role]).read_bytes()
            assert {k: v for k, v in meta.items() if k not in IMAGE_KEYS[kind]} == {
                k: v for k, v in rec.items() if k not in IMAGE_KEYS[kind]
            }


@pytest.mark.parametrize("form", ["hf", "parquet"])
@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_each_kind_serves_the_same_items_as_its_jsonl_form(corpus, kind, form):
    ds = build(kind, corpus[form][kind], image_size=32)
    ref = JSONL[kind](PARAMS[kind](path=str(corpus["jsonl"][kind]), image_size=32))
    assert len(ds) == len(ref)
    for i in (0, 7, len(ds) - 1):
        got, want = ds[i], ref[i]
        assert got["image"].shape == (3, 32, 32)
        assert torch.equal(got["image"], want["image"])
        if kind == "conversations":
            assert got["qa"] == want["qa"] and len(got["qa"]) == 3
        elif kind == "captions":
            assert got["caption"] == want["caption"]
        else:
            assert got["edit"]["instruction"] == want["edit"]["instruction"]
            assert torch.equal(got["edit"]["image"], want["edit"]["image"])
    last = ds[len(ds) - 1]
    if form == "parquet":  # a row is named in its own file
        file = corpus["parquet"][kind] / f"{kind}-{PARQUET_FILES - 1}.parquet"
        assert last["file"] == f"{file}:{last['row']}" and 0 < last["row"] < len(ds) - 1
    else:
        assert last["file"] == f"{corpus['hf'][kind]}:{len(ds) - 1}" and last["row"] == len(ds) - 1


def test_a_parquet_file_or_a_glob_reads_as_the_folder_does(corpus):
    folder = corpus["parquet"]["captions"]
    whole = build("captions", folder)
    one = build("captions", folder / "captions-0.parquet")
    both = build("captions", folder / "*.parquet")
    assert len(both) == len(whole) and 0 < len(one) < len(whole)
    assert [both[i]["caption"] for i in range(len(both))] == [whole[i]["caption"] for i in range(len(whole))]


def test_images_are_decoded_per_item_not_when_built(corpus, monkeypatch):
    decoded = []
    real = hf_module.load_rgb
    monkeypatch.setattr(hf_module, "load_rgb", lambda src, **kw: decoded.append(kw) or real(src, **kw))
    ds = build("edits", corpus["hf"]["edits"])
    assert decoded == [] and ds.rows.dtype.kind == "i" and len(ds.rows) == len(ds)
    ds[3]
    assert len(decoded) == 2  # the source and the target of one row
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a copy
    assert torch.equal(clone[3]["image"], ds[3]["image"])


def test_image_paths_in_a_column_are_relative_to_image_root(corpus, tmp_path):
    recs = [json.loads(x) for x in corpus["jsonl"]["captions"].read_text().splitlines()]
    path = write(recs, tmp_path / "paths" / "captions.parquet", "captions", form="parquet", images=False)
    with pytest.raises(ValueError, match=rf"^captions: {path} row 0: image 'images/astronaut_whole.png' not found"):
        build("captions", path)
    ds = build("captions", path, image_root=str(corpus["jsonl"]["captions"].parent))
    ref = build("captions", corpus["hf"]["captions"])
    assert torch.equal(ds[5]["image"], ref[5]["image"]) and ds[5]["caption"] == ref[5]["caption"]


def test_fields_are_mapped_by_column_name(corpus, tmp_path):
    rows = [{"picture": r["image"], "text": r["caption"]} for r in all_rows(corpus, "captions")]
    with quiet_datasets():
        path = tmp_path / "renamed"
        datasets.Dataset.from_list(rows).cast_column("picture", datasets.Image()).save_to_disk(str(path))
    ds = build("captions", path, fields={"image": "picture", "caption": "text"})
    assert ds[2]["caption"] == rows[2]["text"]
    with pytest.raises(
        ValueError, match=rf"^captions: {path}: no column 'image' \(fields.image\); its columns: picture, text$"
    ):
        build("captions", path)


BAD = {
    "missing image": (
        "captions",
        lambda r: {**r, "image": {"bytes": None, "path": "images/nowhere.png"}},
        r"image 'images/nowhere.png' not found",
    ),
    "corrupt image bytes": (
        "edits",
        lambda r: {**r, "target": {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": "broken.png"}},
        r"image 'broken.png' is (unreadable|corrupt)",
    ),
    "truncated image bytes": (
        "captions",
        lambda r: {**r, "image": {"bytes": r["image"]["bytes"][:300], "path": "cut.png"}},
        r"image 'cut.png' is corrupt",
    ),
    "row without the mapped field": (
        "edits",
        lambda r: {**r, "instruction": None},
        r"field 'instruction' \(fields.instruction\) is None, expected a non-empty str",
    ),
    "conversation without <image>": (
        "conversations",
        lambda r: {
            **r,
            "conversations": [{**t, "value": t["value"].replace("<image>", "")} for t in r["conversations"]],
        },
        r"an image record whose conversation has no <image> in a human turn",
    ),
}


@pytest.mark.parametrize("form", ["hf", "parquet"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_row_is_named_by_file_and_row(corpus, tmp_path, case, form):
    kind, damage, message = BAD[case]
    rows = all_rows(corpus, kind)
    rows[5] = damage(rows[5])
    # a missing file cannot be written as datasets.Image(): its column stays a plain {bytes, path} struct
    images = case != "missing image"
    path = write(rows, tmp_path / (kind if form == "hf" else f"{kind}.parquet"), kind, form, images)
    with pytest.raises(BadRecord, match=rf"^{kind}: {path} row 5: {message}"):
        build(kind, path)


def test_skip_bad_goes_past_at_most_n_bad_rows_and_counts_them(corpus, tmp_path):
    rows = all_rows(corpus, "captions")
    for n in (2, 7):
        rows[n] = {**rows[n], "image": {"bytes": None, "path": "images/nowhere.png"}}
    path = write(rows, tmp_path / "captions", "captions", images=False)
    with pytest.raises(BadRecord, match=rf"captions: {path} row 7: .* \(bad record 2, past skip_bad=1\)"):
        build("captions", path, skip_bad=1)
    with pytest.warns(
        UserWarning, match=rf"captions: {path}: skipped 2 bad record\(s\) \(skip_bad=2\); first: .* row 2:"
    ) as got:
        ds = build("captions", path, skip_bad=2)
    assert len(got) == 1 and ds.bad == 2 and len(ds) == len(rows) - 2
    assert list(ds.rows) == [n for n in range(len(rows)) if n not in (2, 7)]


def test_text_only_conversations_are_left_out_and_counted(corpus, tmp_path):
    rows = all_rows(corpus, "conversations")
    turns = [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]
    rows += [{"id": f"text{i}", "image": None, "conversations": turns} for i in range(2)]
    path = write(rows, tmp_path / "conversations", "conversations")
    with pytest.warns(UserWarning, match=r"left out 2 text-only record\(s\)") as got:
        ds = build("conversations", path)
    assert len(got) == 1 and len(ds) == len(rows) - 2 and ds.left_out == {"text-only record(s)": 2}


@pytest.mark.parametrize("kind", ["conversations", "edits"])  # an id column, and row values
def test_splits_are_disjoint_and_cover_the_rows(corpus, kind):
    path = corpus["hf"][kind]
    whole = build(kind, path)
    parts = [build(kind, path, split=s, val_fraction=0.3, test_fraction=0.2) for s in ("train", "val", "test")]
    rows = [set(p.rows.tolist()) for p in parts]
    assert all(rows) and sum(map(len, rows)) == len(whole) and set.union(*rows) == set(whole.rows.tolist())
    again = build(kind, path, split="val", val_fraction=0.3, test_fraction=0.2)
    assert again.rows.tolist() == parts[1].rows.tolist()  # stable
    with pytest.raises(ValueError, match=r"split 'val' .* has no usable records .* set data.params.val_fraction"):
        build(kind, path, split="val")


def test_num_samples_draws_a_seeded_subset(corpus):
    path = corpus["hf"]["captions"]
    a, b = build("captions", path, num_samples=5, seed=1), build("captions", path, num_samples=5, seed=1)
    c = build("captions", path, num_samples=5, seed=2)
    assert len(a) == 5 and a.rows.tolist() == b.rows.tolist() != c.rows.tolist()
    assert a.rows.tolist() == sorted(a.rows.tolist())


def test_paths_that_are_not_datasets_say_what_is_expected(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist \(expected a datasets folder, a .parquet file"):
        build("captions", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither a datasets folder .* nor a folder of .parquet files"):
        build("captions", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no file matches"):
        build("captions", tmp_path / "*.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=rf"captions: {junk}: cannot be read as a datasets folder or parquet"):
        build("captions", junk)
    with quiet_datasets():
        dd = datasets.DatasetDict({"train": datasets.load_from_disk(str(corpus["hf"]["captions"]))})
        dd.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(
        ValueError, match=rf"holds several splits \(a DatasetDict: train\); .* e.g. {tmp_path / 'dict' / 'train'}"
    ):
        build("captions", tmp_path / "dict")
    assert len(build("captions", tmp_path / "dict" / "train")) > 0


def test_a_clean_corpus_loads_without_warnings(corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in PARAMS:
            for form in ("hf", "parquet"):
                build(kind, corpus[form][kind])
