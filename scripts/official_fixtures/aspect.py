"""Record the released ILLUME+ code's image sizing, for tests that run without it.

    python scripts/official_fixtures/aspect.py /path/to/ILLUME_plus --commit 51de69d

``/path/to/ILLUME_plus`` is a checkout of the reference repository (the folder holding ``ILLUME/``
and ``vision_tokenizer/``). It is run from there, never copied: ``illume/data/aspect_ratio_utils.py``
(anchor matching, pad and crop) is imported as a package module (it needs torch, torchvision and
numpy, nothing heavier), and the MoVQ image processor file (``smart_resize`` and the processor of
understanding) is loaded by its path, which skips ``tokenizer/__init__.py`` and the model code it
imports; it needs transformers. Nothing is stubbed.

Writes ``tests/fixtures/official/aspect/aspect.json`` (anchor per input size and base, the sizes the
image is resized to before padding or cropping, the understanding size per bound) and
``pixels.safetensors`` (small random images and the official outputs for them, uint8).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official" / "aspect"

# (height, width): square, wide, tall, extreme, tiny, huge, and sizes that are anchors themselves
SIZES = [
    (512, 512), (64, 64), (1000, 1000),
    (480, 640), (720, 1280), (300, 900), (375, 500),
    (640, 480), (1280, 720), (900, 300),
    (100, 1000), (1000, 100), (10, 5000), (5000, 10), (200, 1000), (1000, 150),
    (1, 1), (3, 7), (7, 3), (16, 16), (31, 17),
    (4000, 6000), (6000, 4000), (8192, 8192), (2048, 8192),
    (384, 576), (576, 384), (320, 960), (256, 1024), (48, 64), (96, 48),
]  # fmt: skip
BASES = [64, 256, 384, 512, 768, 1024]
# (min_pixels, max_pixels, factor): the released 3B/7B stage 3, its base config, a 64-pixel budget
NATIVE = [(32 * 32, 768 * 768, 16), (256 * 256, 256 * 256, 16), (32 * 32, 64 * 64, 16), (32 * 32, 512 * 512, 32)]
# small random images (height, width) whose output pixels are recorded
PIXEL_SIZES = [(37, 53), (64, 48), (20, 90), (90, 20), (64, 64)]
PIXEL_BASES = [64, 128]


def scaled_table(ratios, base):
    return [(h * base // 512, w * base // 512) for h, w in ratios]


class _SizeOnly:
    """Stands in for a PIL image whose pixels do not matter: reports its size, and records the size
    the official code resizes it to (returning a blank image of that size to go on with)."""

    def __init__(self, w, h):
        self.size = (w, h)
        self.resized_to = None

    def resize(self, size, method=None):
        from PIL import Image

        self.resized_to = size
        return Image.new("RGB", size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official", type=Path, help="the reference repository's folder (holds ILLUME/)")
    ap.add_argument("--commit", help="its commit (default: git rev-parse HEAD there)")
    args = ap.parse_args()
    root = args.official.resolve()
    commit = args.commit
    if commit is None:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()

    sys.path.insert(0, str(root / "ILLUME"))
    import numpy as np
    import PIL
    import torch
    from illume.data import aspect_ratio_utils as aru  # the reference code, from its path
    from illume.data import data_utils as du
    from PIL import Image
    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location(
        "official_movq", root / "vision_tokenizer" / "tokenizer" / "movqgan" / "image_processing_movqgan.py"
    )
    movq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(movq)

    ratios = [tuple(r) for r in aru.RATIOS]
    calc = sorted(tuple(r) for r in aru.calculate_ratio())
    cases = []
    for base in BASES:
        table = scaled_table(ratios, base)
        arc = aru.AspectRatioCrop(table, crop_percent_thresh=0)
        for h, w in SIZES:
            anchor = tuple(arc.base_sizes[arc._find_size(w, h)])
            rec = {"base": base, "size": [h, w], "anchor": list(anchor)}
            for fit, fn in (("pad", du.resize_with_padding), ("crop", du.center_crop_and_resize)):
                img = _SizeOnly(w, h)
                try:
                    out = fn(img, output_size=anchor)
                    rw, rh = img.resized_to
                    rec[fit] = {"resized": [rh, rw], "output": [out.size[1], out.size[0]]}
                except Exception as exc:  # the official code cannot resize to a zero side
                    rec[fit] = {"error": type(exc).__name__}
            cases.append(rec)

    native = []
    for lo, hi, factor in NATIVE:
        for h, w in SIZES:
            rh, rw = movq.smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
            native.append({"min_pixels": lo, "max_pixels": hi, "factor": factor, "size": [h, w], "native": [rh, rw]})

    rng = np.random.default_rng(0)
    tensors, pixel_cases = {}, []
    for i, (h, w) in enumerate(PIXEL_SIZES):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        tensors[f"input_{i}"] = torch.from_numpy(arr.copy())
        img = Image.fromarray(arr)
        for base in PIXEL_BASES:
            arc = aru.AspectRatioCrop(scaled_table(ratios, base), crop_percent_thresh=0)
            padded, _, target, _ = arc(img, is_inference=True)
            cropped, _, _, _ = arc(img, is_inference=False)
            tensors[f"pad_{i}_{base}"] = torch.from_numpy(np.asarray(padded).copy())
            tensors[f"crop_{i}_{base}"] = torch.from_numpy(np.asarray(cropped).copy())
            pixel_cases.append({"index": i, "base": base, "anchor": list(target)})
        proc = movq.MoVQImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64, spatial_factor=16)
        out = proc.preprocess(img, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
        tensors[f"native_{i}"] = torch.from_numpy(np.ascontiguousarray(out.transpose(1, 2, 0)).astype(np.uint8))

    OUT.mkdir(parents=True, exist_ok=True)
    record = {
        "official_commit": commit,
        "generated_by": "scripts/official_fixtures/aspect.py",
        "pillow": PIL.__version__,  # the processor resizes through Pillow: its resampling is the pixels
        "ratios_512": [list(r) for r in ratios],
        "calculate_ratio_512": [list(r) for r in calc],
        "anchor_cases": cases,
        "native_cases": native,
        "pixels": {
            "sizes": [list(s) for s in PIXEL_SIZES],
            "snap": pixel_cases,
            "native": {"min_pixels": 32 * 32, "max_pixels": 64 * 64, "factor": 16},
        },
    }
    (OUT / "aspect.json").write_text(json.dumps(record, indent=1) + "\n")
    save_file(tensors, str(OUT / "pixels.safetensors"), metadata={"official_commit": commit})
    print(f"wrote {OUT} ({len(cases)} anchor cases, {len(native)} native cases, {len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
