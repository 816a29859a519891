"""Samples per second and memory of streaming task records from webdataset tar shards.

    python bench/data_stream.py [--records 100000] [--per-shard 1000] [--size 32] [--batch 32]
                                [--workers 0 2 4] [--shuffle-buffer 1000] [--dir DIR]

Writes ``--records`` synthetic caption records (``--size`` px PNGs, ``illume_kit.testing.shards``) into
shards of ``--per-shard``, then reads them all once per row, each row in a fresh process:

- ``tar read`` (the baseline, measured in the same run): webdataset's tar iteration of every shard,
  samples grouped by key, nothing decoded: what reading the bytes alone costs;
- ``stream, N workers``: ``ShardTaskStream`` (``format: webdataset``) through the trainer's
  ``StatefulDataLoader`` (``illume_kit.train.data.make_stream_loader``, batch ``--batch``): records
  checked, PNGs decoded and resized, items collated, as an ``mllm`` stage reads them.

Memory: the proportional set size (PSS, ``/proc/PID/smaps_rollup``: pages a forked worker shares with
its parent count once) of the reading process plus its DataLoader workers, sampled after 10% of the
records and at the end, and the peak resident sets (``ru_maxrss`` of the process and of its largest
worker). The stream keeps a shuffle buffer and a tar member at a time per worker, so its memory does
not grow with the number of records: the two RSS columns match.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pss_mib(pid: int) -> float:
    """The proportional set size: pages shared with forked workers count once over all of them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def total_rss() -> float:
    me = os.getpid()
    return pss_mib(me) + sum(pss_mib(c) for c in children(me))


def write(folder: Path, records: int, per_shard: int, size: int) -> None:
    import webdataset as wds

    from illume_kit.testing.shards import _sample

    folder.mkdir(parents=True, exist_ok=True)
    # 256 distinct records re-keyed: writing 100k PNGs would cost more than reading them
    proto = [_sample("captions", i, size, "members", None, False) for i in range(256)]
    for s, start in enumerate(range(0, records, per_shard)):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for i in range(start, min(records, start + per_shard)):
                sink.write({**proto[i % 256], "__key__": f"{i:08d}"})


def run_row(kind: str, folder: str, records: int, workers: int, batch: int, size: int, buffer: int) -> dict:
    """One row, in this process (the child): reads every record once, reports rate and memory."""
    import torch

    torch.set_num_threads(1)
    tenth, marks = max(1, records // 10), {}
    t0 = time.perf_counter()
    n = 0
    if kind == "tar":
        from illume_kit.data.stream import expand_shards, read_shard

        for shard in expand_shards(folder):
            for _ in read_shard(shard):
                n += 1
                if n == tenth:
                    marks["rss_10"] = total_rss()
    else:
        from illume_kit.data.params import CaptionsParams
        from illume_kit.data.stream import ShardTaskStream
        from illume_kit.train.data import make_stream_loader

        params = CaptionsParams(format="webdataset", path=folder, image_size=size, shuffle_buffer=buffer)
        loader = make_stream_loader(
            ShardTaskStream("captions", params), batch_size=batch, seed=0, num_workers=workers, collate_fn=list
        )
        it = iter(loader)
        while n < records:
            n += len(next(it))
            if "rss_10" not in marks and n >= tenth:
                marks["rss_10"] = total_rss()
        marks["rss_end"] = total_rss()
        del it
    marks.setdefault("rss_end", total_rss())
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"n": n, "seconds": seconds, "peak_main": own, "peak_worker": worker, **marks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32, help="image side in pixels (written and served)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--small", type=int, default=10_000, help="records of the memory-growth comparison row")
    ap.add_argument("--dir", default=None, help="where the shards go (default: a temporary folder)")
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row, print JSON
    args = ap.parse_args()
    if args.row:
        kind, folder, records, workers = json.loads(args.row)
        res = run_row(kind, folder, records, workers, args.batch, args.size, args.shuffle_buffer)
        print(json.dumps(res))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        t0 = time.perf_counter()
        write(big, args.records, args.per_shard, args.size)
        write(small, args.small, args.per_shard, args.size)
        size_mb = sum(f.stat().st_size for f in big.glob("*.tar")) / 2**20
        console.print(
            f"wrote {args.records} records ({size_mb:.0f} MiB, {len(list(big.glob('*.tar')))} shards) and "
            f"{args.small} in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs"
        )
        rows = [("tar read (baseline, no decode)", "tar", big, args.records, 0)]
        rows += [(f"stream, {w} workers", "stream", big, args.records, w) for w in args.workers]
        rows += [(f"stream, 0 workers, {args.small} records", "stream", small, args.small, 0)]
        table = Table(title=f"streaming {args.size}x{args.size} PNG caption records from tar shards")
        for col in ("row", "records", "samples/s", "vs baseline", "PSS @10%", "PSS @end", "peak main", "peak worker"):
            table.add_column(col, justify="left" if col == "row" else "right")
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        base = None
        for name, kind, folder, records, workers in rows:
            cmd = [sys.executable, __file__, "--row", json.dumps([kind, str(folder), records, workers])]
            cmd += ["--batch", str(args.batch), "--size", str(args.size), "--shuffle-buffer", str(args.shuffle_buffer)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode:
                console.print(f"[red]{name} failed[/red]\n{proc.stderr[-2000:]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rate = res["n"] / res["seconds"]
            base = base or rate
            table.add_row(
                name,
                f"{res['n']:,}",
                f"{rate:,.0f}",
                f"{rate / base:.2f}x",
                f"{res['rss_10']:.0f} MiB",
                f"{res['rss_end']:.0f} MiB",
                f"{res['peak_main']:.0f} MiB",
                f"{res['peak_worker']:.0f} MiB" if workers else "-",
            )
        console.print(table)


if __name__ == "__main__":
    main()
