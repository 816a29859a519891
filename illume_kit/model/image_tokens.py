"""Discrete image blocks: an image's codes as vocabulary ids, and back.

The output side of ILLUME+ (reference §3.3): ``<height_H><width_W><start_of_image>``, then per
codebook level (coarse first) ``<start_of_level{i}>``, rows of (codebook offset + code) each closed
by ``<end_of_line>``, ``<end_of_level{i}>``, and ``<end_of_image>``. Training targets are built
with ``image_block_ids``; what the sampler generates is read back with ``parse_image_ids``, which
names the position and the token of anything malformed instead of silently reshaping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from illume_kit.core.layout import VocabLayout


class ImageSequenceError(ValueError):
    """A token sequence that is not a well-formed image block."""


def describe_id(layout: VocabLayout, token: int) -> str:
    """Human-readable name of an id for error messages."""
    if 0 <= token < layout.text_vocab_size:
        return f"text token {token}"
    for name in layout.special_tokens:
        if layout.token_id(name) == token:
            return f"{name} ({token})"
    for cb in layout.codebooks:
        if cb.start <= token < cb.stop:
            return f"codebook {cb.name!r} code {token - cb.start} ({token})"
    return f"id {token} (outside the layout, which ends at {layout.total_size})"


def image_block_ids(
    layout: VocabLayout, codes: Mapping[str, torch.Tensor], size: tuple[int, int] | None = None
) -> list[int]:
    """Output-side ids of one image: [tags] SOI {SOL_i rows(codes + EOL) EOL_i}* EOI.

    ``codes`` maps every codebook of the layout to a (h, w) grid of code values; ``size`` (H, W)
    prepends the resolution tags.
    """
    out: list[int] = list(layout.resolution_ids(*size)) if size is not None else []
    out.append(layout.soi)
    for i, cb in enumerate(layout.codebooks):
        if cb.name not in codes:
            raise KeyError(f"codes lack codebook {cb.name!r} (got {sorted(codes)})")
        grid = torch.as_tensor(codes[cb.name]).detach().cpu()  # ids are host data; one copy per grid
        if grid.dim() != 2:
            raise ValueError(f"codes[{cb.name!r}] must be a (h, w) grid, got shape {tuple(grid.shape)}")
        if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= cb.size):
            raise ValueError(f"codes[{cb.name!r}] has values outside [0, {cb.size})")
        h, w = grid.shape
        rows = torch.cat([grid.long() + cb.start, torch.full((h, 1), layout.eol, dtype=torch.long)], dim=1)
        out.append(layout.level_start(i))
        out.extend(rows.flatten().tolist())
        out.append(layout.level_end(i))
    out.append(layout.eoi)
    return out


@dataclass
class ParsedImage:
    codes: dict[str, torch.Tensor]  # codebook -> LongTensor (h, w)
    size: tuple[int, int] | None  # from the resolution tags, when present


def _size_from_tags(layout: VocabLayout, ids: Sequence[int]) -> tuple[int, int] | None:
    r0, n = layout.resolution_start, len(layout.resolution_tags) // 2
    if not ids or not r0 <= ids[0] < r0 + 2 * n:
        return None
    if len(ids) < 2 or not (r0 <= ids[0] < r0 + n and r0 + n <= ids[1] < r0 + 2 * n):
        raise ImageSequenceError(
            f"position 0: resolution tags must be <height_H><width_W>, got "
            f"{', '.join(describe_id(layout, t) for t in ids[:2])}"
        )
    step = layout.resolution_step
    return ((ids[0] - r0 + 1) * step, (ids[1] - r0 - n + 1) * step)


def parse_image_ids(
    layout: VocabLayout, ids: Sequence[int] | torch.Tensor, grids: Mapping[str, tuple[int, int]] | None = None
) -> ParsedImage:
    """Inverse of ``image_block_ids``: exactly one image block (tags optional) -> per-codebook grids.

    ``grids`` (codebook -> (h, w)) additionally checks the shapes. Raises ``ImageSequenceError``
    naming the position and the offending token on any malformed sequence.
    """
    ids = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    size = _size_from_tags(layout, ids)
    pos = 2 if size is not None else 0

    def expect(want: int) -> None:
        nonlocal pos
        if pos >= len(ids):
            raise ImageSequenceError(f"sequence ends at position {pos}, expected {describe_id(layout, want)}")
        if ids[pos] != want:
            raise ImageSequenceError(
                f"position {pos}: expected {describe_id(layout, want)}, got {describe_id(layout, ids[pos])}"
            )
        pos += 1

    expect(layout.soi)
    codes: dict[str, torch.Tensor] = {}
    for i, cb in enumerate(layout.codebooks):
        expect(layout.level_start(i))
        rows: list[list[int]] = []
        row: list[int] = []
        while pos < len(ids) and ids[pos] != layout.level_end(i):
            t = ids[pos]
            if t == layout.eol:
                if not row:
                    raise ImageSequenceError(f"position {pos}: empty row in level {i} ({cb.name!r})")
                if rows and len(row) != len(rows[0]):
                    raise ImageSequenceError(
                        f"position {pos}: row {len(rows)} of level {i} ({cb.name!r}) has "
                        f"{len(row)} codes, row 0 has {len(rows[0])}"
                    )
                rows.append(row)
                row = []
            elif cb.start <= t < cb.stop:
                row.append(t - cb.start)
            else:
                raise ImageSequenceError(
                    f"position {pos}: expected a code of codebook {cb.name!r}, "
                    f"<end_of_line> or <end_of_level{i}>, got {describe_id(layout, t)}"
                )
            pos += 1
        if row:
            raise ImageSequenceError(
                f"position {pos}: level {i} ({cb.name!r}) ends inside a row (missing <end_of_line>)"
            )
        if not rows:
            raise ImageSequenceError(f"position {pos}: level {i} ({cb.name!r}) has no rows")
        expect(layout.level_end(i))
        codes[cb.name] = torch.tensor(rows, dtype=torch.long)
    expect(layout.eoi)
    if pos != len(ids):
        raise ImageSequenceError(f"position {pos}: {len(ids) - pos} tokens after <end_of_image>")
    if grids is not None:
        for name, hw in grids.items():
            if tuple(codes[name].shape) != tuple(hw):
                raise ImageSequenceError(f"codebook {name!r} grid is {tuple(codes[name].shape)}, expected {tuple(hw)}")
    return ParsedImage(codes, size)


def extract_images(layout: VocabLayout, ids: Sequence[int] | torch.Tensor) -> list[ParsedImage]:
    """Every image block in a generated sequence (text around them is skipped)."""
    ids = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    out, start = [], 0
    while True:
        try:
            soi = ids.index(layout.soi, start)
        except ValueError:
            return out
        try:
            eoi = ids.index(layout.eoi, soi)
        except ValueError:
            raise ImageSequenceError(f"position {soi}: <start_of_image> without <end_of_image>") from None
        first = soi - 2 if soi >= 2 and _is_tag_pair(layout, ids[soi - 2 : soi]) else soi
        out.append(parse_image_ids(layout, ids[first : eoi + 1]))
        start = eoi + 1


def _is_tag_pair(layout: VocabLayout, pair: Sequence[int]) -> bool:
    r0, n = layout.resolution_start, len(layout.resolution_tags) // 2
    return r0 <= pair[0] < r0 + n and r0 + n <= pair[1] < r0 + 2 * n
