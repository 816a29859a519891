"""Task records streamed from webdataset tar shards: each kind read from tar, bad records named by
shard and key, skip_bad, every record read by exactly one (rank, worker) slot per epoch, a seeded
shuffle buffer, and a state that continues a stream exactly where it stopped."""

import itertools
import warnings
from types import SimpleNamespace

import pytest
import torch

from illume_kit.data import stream as S
from illume_kit.data.params import CaptionsParams, ConversationsParams, EditsParams
from illume_kit.data.records import BadRecord
from illume_kit.data.stream import ShardTaskStream, expand_shards
from illume_kit.testing.shards import write_shards

PARAMS = {"captions": CaptionsParams, "conversations": ConversationsParams, "edits": EditsParams}


def stream(kind, path, **kw):
    kw.setdefault("image_size", 16)
    return ShardTaskStream(kind, PARAMS[kind](format="webdataset", path=str(path), **kw))


def take(ds, n):
    return list(itertools.islice(iter(ds), n))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for kind in PARAMS:
        write_shards(root / kind, 24, kind=kind, per_shard=6, text_only={5} if kind == "conversations" else set())
    write_shards(root / "plain", 12, kind="captions", layout="plain", per_shard=6)
    return root


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_each_kind_reads_from_tar_with_its_images_and_texts(shards, kind):
    ds = stream(kind, shards / kind, shuffle_buffer=0)
    items = take(ds, 4)
    assert [it["file"] for it in items] == [f"shard-{0:06d}.tar:{i:06d}" for i in range(4)]
    first = items[1]
    assert first["image"].shape == (3, 16, 16) and first["key"] == "000001"
    if kind == "captions":
        assert first["caption"] == "a picture number 1"
    elif kind == "conversations":
        assert first["qa"] == [("what is shown?", "picture 1")]
    else:
        assert first["edit"]["instruction"] == "recolour picture 1"
        assert not torch.equal(first["edit"]["image"], first["image"])  # target and source are two members
    assert not hasattr(ds, "__len__")


def test_pixels_come_from_the_sample_s_own_member(shards):
    from PIL import Image

    item = take(stream("captions", shards / "captions", shuffle_buffer=0), 3)[2]
    expected = Image.new("RGB", (1, 1), ((2 * 67) % 256, (2 * 131 + 40) % 256, (2 * 29 + 90) % 256)).getpixel((0, 0))
    assert [round(float(item["image"][c, 0, 0]) * 255) for c in range(3)] == list(expected)


def test_plain_members_map_by_extension(shards):
    ds = stream("captions", shards / "plain", shuffle_buffer=0, fields={"image": "png", "caption": "txt"})
    item = take(ds, 1)[0]
    assert item["caption"] == "a picture number 0" and item["image"].shape == (3, 16, 16)


def test_text_only_conversations_are_left_out_and_counted(shards):
    ds = stream("conversations", shards / "conversations", shuffle_buffer=0)
    with pytest.warns(UserWarning, match=r"leaving out text-only record\(s\).*shard-000000\.tar:000005"):
        keys = [it["key"] for it in take(ds, 23)]
    assert "000005" not in keys and len(set(keys)) == 23
    assert ds.left_out == {"text-only record(s)": 1}


def test_paths_glob_brace_folder_and_file(shards):
    folder = shards / "captions"
    every = [str(p) for p in sorted(folder.glob("*.tar"))]
    assert expand_shards(str(folder)) == every
    assert expand_shards(str(folder / "*.tar")) == every
    assert expand_shards(str(folder / "shard-{000000..000001}.tar")) == every[:2]
    assert expand_shards(every[0]) == every[:1]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        expand_shards(str(folder / "nowhere.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        expand_shards(str(folder / "*.zip"))


def test_a_pipe_url_is_a_missing_file_not_a_command(shards, tmp_path):
    flag = tmp_path / "ran"
    with pytest.raises(FileNotFoundError):
        expand_shards(f"pipe:touch {flag}")
    assert not flag.exists()


@pytest.mark.parametrize(
    ("kind", "bad", "message"),
    [
        ("captions", "missing_image", r"captions: shard-000000\.tar:000003: image 'image\.png' is not a member"),
        ("captions", "corrupt", r"captions: shard-000000\.tar:000003: image 'image\.png' is (corrupt|unreadable)"),
        ("captions", "no_field", r"captions: shard-000000\.tar:000003: the record has no 'caption' field"),
        ("edits", "missing_image", r"edits: shard-000000\.tar:000003: image 'source\.png' is not a member"),
        ("conversations", "no_image_token", r"conversations: shard-000000\.tar:000003: .*no <image>"),
    ],
)
def test_a_bad_record_is_named_by_shard_and_key(tmp_path, kind, bad, message):
    write_shards(tmp_path, 12, kind=kind, per_shard=6, bad={3: bad})
    with pytest.raises(BadRecord, match=message):
        take(stream(kind, tmp_path, shuffle_buffer=0), 12)


def test_skip_bad_goes_past_at_most_n_and_counts_them(tmp_path):
    write_shards(tmp_path, 12, per_shard=6, bad={1: "corrupt", 4: "missing_image", 8: "no_field"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadRecord, match=r"shard-000001\.tar:000008.*bad record 3, past skip_bad=2"):
            take(stream("captions", tmp_path, shuffle_buffer=0, skip_bad=2), 12)
    assert [str(w.message).count("skipped bad record") for w in caught] == [1, 1]
    ds = stream("captions", tmp_path, shuffle_buffer=0, skip_bad=3)
    with pytest.warns(UserWarning, match="skipped bad record 3 of at most 3"):
        keys = [it["key"] for it in take(ds, 9)]
    assert keys == [f"{i:06d}" for i in range(12) if i not in (1, 4, 8)] and ds.state_dict()["bad"] == 3


def test_a_plain_jpg_that_is_no_image_is_bad(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "x1", "jpg": b"not an image at all", "txt": "hello"})
    with pytest.raises(BadRecord, match=r"a\.tar:x1: image 'image' is unreadable"):
        take(stream("captions", tmp_path, fields={"image": "jpg", "caption": "txt"}), 1)


def test_splits_hold_records_out_by_key(shards):
    def keys(split):
        ds = stream("captions", shards / "captions", shuffle_buffer=0, split=split, val_fraction=0.3)
        return {k for _, s in ds.samples(0, 0, 1) for k in [s["__key__"]]}

    train, val = keys("train"), keys("val")
    assert train and val and not train & val and len(train | val) == 24


def slot_keys(ds, epoch, slots):
    return [[s["__key__"] for _, s in ds.samples(epoch, slot, slots)] for slot in range(slots)]


@pytest.mark.parametrize("per_shard", [3, 12])  # 8 shards (dealt to slots) or 2 (records by position)
def test_two_ranks_by_two_workers_cover_every_record_once_per_epoch(tmp_path, per_shard):
    write_shards(tmp_path, 24, per_shard=per_shard)
    ds = stream("captions", tmp_path, shuffle_buffer=4)
    for epoch in range(2):
        parts = slot_keys(ds, epoch, 4)
        every = [k for part in parts for k in part]
        assert sorted(every) == [f"{i:06d}" for i in range(24)] and all(parts)
    assert slot_keys(ds, 0, 4) != slot_keys(ds, 1, 4)  # epochs reshuffle


def test_rank_and_worker_make_the_slot(tmp_path, monkeypatch):
    write_shards(tmp_path, 8, per_shard=1)
    ds = stream("captions", tmp_path)
    ds.shard_over(1, 2)
    monkeypatch.setattr(S, "get_worker_info", lambda: SimpleNamespace(id=1, num_workers=3))
    assert ds.slot() == (4, 6)


def test_the_shuffle_buffer_is_a_function_of_seed_epoch_and_slot(tmp_path):
    write_shards(tmp_path, 40, per_shard=10)
    a = slot_keys(stream("captions", tmp_path, shuffle_buffer=8), 0, 1)[0]
    assert a == slot_keys(stream("captions", tmp_path, shuffle_buffer=8), 0, 1)[0]
    assert a != slot_keys(stream("captions", tmp_path, shuffle_buffer=8, seed=1), 0, 1)[0]
    off = slot_keys(stream("captions", tmp_path, shuffle_buffer=0), 0, 1)[0]
    assert sorted(a) == sorted(off) and a != off
    assert all(off[i : i + 10] == sorted(off[i : i + 10]) for i in range(0, 40, 10))  # 0: shard order


def test_state_dict_continues_mid_epoch_and_across_epochs_identically(tmp_path, monkeypatch):
    write_shards(tmp_path, 30, per_shard=7)
    whole = [it["file"] for it in take(stream("captions", tmp_path, shuffle_buffer=5), 50)]
    for cut in (11, 30, 33):
        ds = stream("captions", tmp_path, shuffle_buffer=5)
        it = iter(ds)
        head = [next(it)["file"] for _ in range(cut)]
        state = ds.state_dict()
        assert set(state) == {"epoch", "consumed", "bad", "slot", "slots"} and all(
            type(v) is int for v in state.values()
        )
        again = stream("captions", tmp_path, shuffle_buffer=5)
        again.load_state_dict(state)
        decoded = []
        monkeypatch.setattr(again, "to_item", lambda shard, s, f=again.to_item, d=decoded: d.append(1) or f(shard, s))
        rest = [x["file"] for x in take(again, 50 - cut)]
        assert head + rest == whole, cut
        assert len(decoded) == 50 - cut  # the fast-forward decoded nothing


def test_a_state_from_another_slot_is_refused(tmp_path):
    write_shards(tmp_path, 8, per_shard=4)
    ds = stream("captions", tmp_path)
    ds.load_state_dict({"epoch": 0, "consumed": 2, "bad": 0, "slot": 1, "slots": 2})
    with pytest.raises(ValueError, match="slot 1 of 2.*slot 0 of 1.*num_workers"):
        take(ds, 1)


def test_a_reader_without_records_says_so_instead_of_spinning(tmp_path):
    write_shards(tmp_path, 2, per_shard=2)
    ds = stream("captions", tmp_path)
    ds.shard_over(2, 3)
    with pytest.raises(ValueError, match="reader 2 of 3 .*no usable record"):
        take(ds, 1)


def test_head_is_storage_order_whatever_the_slot(shards):
    ds = stream("captions", shards / "captions")
    ds.shard_over(1, 2)
    assert [it["key"] for it in ds.head(3)] == ["000000", "000001", "000002"]


def test_num_samples_is_refused_for_a_stream(shards):
    with pytest.raises(ValueError, match="num_samples is not available for format webdataset"):
        stream("captions", shards / "captions", num_samples=3)


def test_stateful_dataloader_with_two_workers_resumes_exactly(tmp_path):
    from illume_kit.train.data import make_stream_loader

    write_shards(tmp_path, 40, per_shard=5)

    def loader(state=None):
        ds = stream("captions", tmp_path, shuffle_buffer=4)
        dl = make_stream_loader(ds, batch_size=3, seed=0, num_workers=2, collate_fn=list)
        if state is not None:
            dl.load_state_dict(state)
        return dl

    whole = [[x["file"] for x in b] for b in itertools.islice(iter(loader()), 12)]
    dl = loader()
    it = iter(dl)
    head = [[x["file"] for x in next(it)] for _ in range(5)]
    state = dl.state_dict()
    del it
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    rest = [[x["file"] for x in b] for b in itertools.islice(iter(loader(state)), 7)]
    assert head + rest == whole
    flat = [k for b in whole for k in b]
    assert len(set(flat)) == len(flat)  # 36 of 40 records: no record twice within the epoch


def test_image_bytes_are_held_to_the_pixel_budget(shards, monkeypatch):
    monkeypatch.setenv("ILLUME_KIT_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(BadRecord, match=r"shard-000000\.tar:000000: image 'image\.png' is unreadable: .*16x16.*limit"):
        take(stream("captions", shards / "captions", shuffle_buffer=0), 1)
