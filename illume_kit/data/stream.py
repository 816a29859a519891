"""Task records streamed from webdataset tar shards: sharded over ranks and workers, shuffled, resumable.

The layout is webdataset's: a sample is the tar members ``KEY.EXT`` sharing a key. Its record is its
``json`` member (a dict) merged with its other members by extension (``txt`` / ``caption`` members
as UTF-8 text, every other member as bytes; a json key wins over a member of the same name). An image
field (``fields.image``, ``source``, ``target``) holds the image bytes (the field names a member, e.g.
``fields: {image: jpg, caption: txt}``) or a string naming a member of the sample (``"source.png"``
for ``KEY.source.png``). The records then go through the task kind's reader
(``illume_kit.data.records``); errors name the shard and the key.

Order. The stream is infinite, epoch after epoch. Its readers are *slots*: every DataLoader worker of
every rank (``rank * workers + worker``). Each epoch draws a shard order from ``(seed, epoch)``; with
at least as many shards as slots, the shards are dealt round-robin to the slots, else every slot reads
every shard and keeps the records whose position in the epoch is its slot modulo the slot count.
Either way each record goes to one slot per epoch. A slot's records pass a shuffle buffer of
``shuffle_buffer`` records whose randomness is a function of ``(seed, epoch, slot)``, so the whole
order is a function of the seed and the number of slots.

Resume. ``state_dict()`` is ``{epoch, consumed, bad, slot, slots}`` (plain ints): the records this slot
has drawn from its shuffle buffer in the current epoch. ``load_state_dict`` makes the next iteration
replay the epoch's draws up to there without decoding a single image, then go on; torchdata's
``StatefulDataLoader`` keeps one such state per worker. Memory is the shuffle buffer, however long
the stream.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from illume_kit.data.folder import _split_of
from illume_kit.data.images import load_rgb, open_image
from illume_kit.data.records import READERS, BadRecord, Unusable

__all__ = ["BadRecord", "ShardTaskStream", "expand_shards", "read_shard"]

TEXT_MEMBERS = ("txt", "caption")


def expand_shards(path: str, what: str = "webdataset") -> list[str]:
    """The tar shards ``path`` names (a .tar, a folder of them, a glob, a brace pattern), sorted."""
    from webdataset.shardlists import expand_urls

    found: list[str] = []
    for one in expand_urls(str(Path(path).expanduser())):
        p = Path(one)
        if p.is_dir():
            found += [str(f) for f in sorted(p.glob("*.tar"))]
        elif any(c in one for c in "*?["):
            found += sorted(f for f in glob.glob(one) if Path(f).is_file())
        elif p.is_file():
            found.append(str(p))
        else:
            raise FileNotFoundError(f"{what}: shard {one!r} does not exist (data.params.path: {path!r})")
    if not found:
        raise FileNotFoundError(
            f"{what}: no .tar shards found at {path!r} (a .tar, a folder, a glob or a brace pattern)"
        )
    return sorted(dict.fromkeys(found))


def read_shard(shard: str, what: str = "webdataset") -> Iterator[dict[str, Any]]:
    """The samples of one shard in tar order: ``{"__key__": KEY, EXT: bytes, ...}``.

    The file is opened here (never through webdataset's URL opener, which would run ``pipe:`` commands
    a recipe names)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(shard, "rb") as f:
        try:
            yield from group_by_keys(tar_file_expander([{"url": shard, "stream": f}]))
        except (OSError, EOFError, ValueError) as e:
            msg = e.args[0] if e.args else e
            raise ValueError(f"{what}: {shard}: not a readable tar shard ({type(e).__name__}: {msg})") from None


def _record(sample: dict[str, Any], where: str) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    if "json" in sample:
        try:
            obj = json.loads(sample["json"])
        except ValueError as e:
            raise BadRecord(f"{where}: its json member is not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise BadRecord(f"{where}: its json member is a {type(obj).__name__}, expected an object")
        rec.update(obj)
    for ext, value in sample.items():
        if ext.startswith("__") or ext == "json" or ext in rec:
            continue
        if ext in TEXT_MEMBERS:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRecord(f"{where}: its {ext} member is not UTF-8 text ({e})") from None
        rec[ext] = value
    return rec


def _members(rec: dict[str, Any]) -> str:
    return ", ".join(sorted(k for k, v in rec.items() if isinstance(v, bytes))) or "none"


class ShardTaskStream(IterableDataset):
    """Items of task ``kind`` (``records.READERS``) from the tar shards at ``params.path``; no ``len``.

    Items carry the reader's fields plus ``key`` (the sample's key), ``shard`` (the shard's file name)
    and ``file`` (``SHARD:KEY``, the item's id). ``rank`` / ``world_size`` default to torch.distributed's.
    """

    def __init__(self, kind: str, params: Any, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        if kind not in READERS:
            raise ValueError(f"webdataset: task kind {kind!r}: expected one of {', '.join(READERS)}")
        self.kind, self.params = kind, params
        if getattr(params, "num_samples", None) is not None:
            raise ValueError(
                f"{kind}: data.params.num_samples is not available for format webdataset (a stream has no "
                "random subset): write fewer shards, or use format jsonl or hf"
            )
        self.reader = READERS[kind](params)
        self.shards = expand_shards(params.path, kind)
        self.seed = int(params.seed)
        self.buffer_size = int(getattr(params, "shuffle_buffer", 1000))
        self.rank, self.world_size = rank, world_size
        self._epoch, self._consumed, self._bad = 0, 0, 0
        self._restored: tuple[int, int] | None = None  # (slot, slots) a loaded state was written by
        self.left_out: dict[str, int] = {}

    # -- placement -------------------------------------------------------------------------------
    def shard_over(self, rank: int, world_size: int) -> None:
        """Read as rank ``rank`` of ``world_size`` (the trainer sets it; else torch.distributed's)."""
        self.rank, self.world_size = int(rank), int(world_size)

    def _ranks(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def slot(self) -> tuple[int, int]:
        """(this reader's slot, the number of slots): ``rank * workers + worker`` of ``world * workers``."""
        rank, world = self._ranks()
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + wid, world * workers

    def shard_order(self, epoch: int) -> list[str]:
        order = list(self.shards)
        random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        return order

    def _raw(self, epoch: int, slot: int, slots: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(shard name, sample) of this slot's share of the epoch, in the split, before shuffling."""
        p = self.params
        order = self.shard_order(epoch)
        if len(order) >= slots:
            mine, pick = order[slot::slots], None
        else:
            mine, pick = order, slot
        position = 0
        for shard in mine:
            for sample in read_shard(shard, self.kind):
                position += 1
                if pick is not None and (position - 1) % slots != pick:
                    continue
                key = sample["__key__"]
                if _split_of(key, p.val_fraction, p.test_fraction) != p.split:
                    continue
                yield Path(shard).name, sample

    def samples(self, epoch: int, slot: int, slots: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(shard name, raw sample) as reader ``slot`` of ``slots`` draws them in ``epoch``: its share, shuffled."""
        raw = self._raw(epoch, slot, slots)
        if self.buffer_size <= 1:
            yield from raw
            return
        rng = random.Random(f"buffer:{self.seed}:{epoch}:{slot}:{slots}")
        buf = list(itertools.islice(raw, self.buffer_size))
        for sample in raw:
            j = rng.randrange(len(buf))
            buf[j], sample = sample, buf[j]
            yield sample
        rng.shuffle(buf)
        yield from buf

    # -- records to items ------------------------------------------------------------------------
    def _where(self, shard: str, key: str) -> str:
        return f"{self.kind}: {shard}:{key}"

    def _check(self, ref: Any, rec: dict[str, Any], where: str) -> bytes:
        if isinstance(ref, str):
            data = rec.get(ref)
            if not isinstance(data, bytes):
                raise BadRecord(f"{where}: image {ref!r} is not a member of the sample (its members: {_members(rec)})")
            name = ref
        elif isinstance(ref, (bytes, bytearray)):
            data, name = bytes(ref), "image"
        else:
            raise BadRecord(f"{where}: image {ref!r} is neither image bytes nor the name of a member")
        try:
            with open_image(io.BytesIO(data), name=name) as img:
                img.verify()
        except ValueError as e:
            raise BadRecord(f"{where}: image {name!r} is unreadable: {e}") from None
        except Exception as e:  # PIL's verify raises several kinds for damaged bytes
            raise BadRecord(f"{where}: image {name!r} is corrupt ({type(e).__name__}: {e})") from None
        return data

    def _load(self, data: bytes, where: str):
        try:
            return load_rgb(io.BytesIO(data), name="image")
        except ValueError as e:
            raise BadRecord(f"{where}: {e}") from None

    def to_item(self, shard: str, sample: dict[str, Any]) -> dict[str, Any]:
        """One sample as a training item; ``BadRecord`` / ``Unusable`` as the reader decides."""
        key = sample["__key__"]
        where = self._where(shard, key)
        rec = _record(sample, where)
        entry = self.reader.entry(rec, where, lambda ref: self._check(ref, rec, where))
        item = self.reader.item(entry, where, lambda data: self._load(data, where))
        return {**item, "key": key, "shard": shard, "file": f"{shard}:{key}"}

    def _skip(self, e: BadRecord) -> None:
        self._bad += 1
        p = self.params
        if self._bad > p.skip_bad:
            more = f" (bad record {self._bad}, past skip_bad={p.skip_bad})" if p.skip_bad else ""
            raise BadRecord(f"{e}{more}") from None
        warnings.warn(f"{self.kind}: skipped bad record {self._bad} of at most {p.skip_bad}: {e}", stacklevel=3)

    def _items(self, samples) -> Iterator[dict[str, Any]]:
        for shard, sample in samples:
            try:
                yield self.to_item(shard, sample)
            except Unusable as u:
                if u.reason not in self.left_out:  # once per reader and reason; the counts are in left_out
                    warnings.warn(
                        f"{self.kind}: {self.params.path}: leaving out {u.reason} (the mllm stage trains image "
                        "tasks only), first at " + self._where(shard, sample["__key__"]),
                        stacklevel=3,
                    )
                self.left_out[u.reason] = self.left_out.get(u.reason, 0) + 1
            except BadRecord as e:
                self._skip(e)

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, slots = self.slot()
        if self._restored is not None and self._restored != (slot, slots):
            raise ValueError(
                f"{self.kind}: the stream state was written by slot {self._restored[0]} of {self._restored[1]} "
                f"(ranks x workers), this reader is slot {slot} of {slots}: resume with the same world size "
                "and num_workers"
            )
        while True:
            epoch, skip = self._epoch, self._consumed
            drawn = served = 0
            for shard, sample in self.samples(epoch, slot, slots):
                drawn += 1
                if drawn <= skip:
                    continue  # replayed to the resume point, nothing decoded
                self._consumed = drawn
                for item in self._items([(shard, sample)]):
                    served += 1
                    yield item
            if drawn == 0 or (served == 0 and skip == 0):
                raise ValueError(
                    f"{self.kind}: {self.params.path!r}: reader {slot} of {slots} (ranks x workers) got no usable "
                    f"record of split {self.params.split!r} in epoch {epoch} ({drawn} drawn, {self._bad} bad, "
                    f"left out: {self.left_out or 'none'}); write more records or shards, or use fewer workers"
                )
            self._epoch, self._consumed = epoch + 1, 0

    def head(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` usable items in shard-name and tar order (no shuffle, one reader): the same on
        every rank, e.g. the texts a tokenizer is trained on."""
        out: list[dict[str, Any]] = []
        p = self.params
        bad, left_out = self._bad, dict(self.left_out)

        def samples():
            for shard in self.shards:
                for sample in read_shard(shard, self.kind):
                    if _split_of(sample["__key__"], p.val_fraction, p.test_fraction) == p.split:
                        yield Path(shard).name, sample

        try:
            for item in self._items(samples()):
                out.append(item)
                if len(out) >= n:
                    break
        finally:
            self._bad, self.left_out = bad, left_out  # looking ahead counts nothing against skip_bad
        return out

    # -- state (torchdata's Stateful protocol) ----------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        slot, slots = self.slot()
        return {"epoch": self._epoch, "consumed": self._consumed, "bad": self._bad, "slot": slot, "slots": slots}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch, self._consumed = int(state["epoch"]), int(state["consumed"])
        self._bad = int(state.get("bad", 0))
        if "slot" in state:
            self._restored = (int(state["slot"]), int(state["slots"]))
