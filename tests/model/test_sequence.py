"""Sequence assembly: block layouts, label masks, padding, discrete input; target build/parse."""

import pytest
import torch
from model_fakes import image, make_model

from illume_kit.model.sequence import (
    ASSISTANT_PREFIX,
    IGNORE,
    USER_PREFIX,
    ImageSequenceError,
    Sample,
    Tag,
    TargetImage,
    assemble,
    encode_images,
    extract_images,
    image_block_ids,
    parse_image_ids,
)
from illume_kit.model.tasks import edit_sample, t2i_sample, und_sample


def text_ids(model, s):
    return model.backbone.text_tokenizer(s, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("names", [("pixel",), ("semantic", "pixel")], ids=["1cb", "2cb"])
def test_understanding_block_layout_labels_and_features(names):
    m = make_model(names)
    lay, img = m.layout, image(0, 48, 64)
    grids = m.tokenizer.grid(48, 64)
    b = assemble(m, [und_sample(img, "what?", "red")])
    ids, lab = b.input_ids[0], b.labels[0]
    prefix = text_ids(m, USER_PREFIX)
    block = lay.image_length(grids, with_tags=False)
    q = text_ids(m, "\nwhat?") + text_ids(m, ASSISTANT_PREFIX)
    ans = text_ids(m, "red") + [m.backbone.text_tokenizer.eos_token_id]
    assert b.lengths == [len(prefix) + block + len(q) + len(ans)]
    assert ids[: len(prefix)].tolist() == prefix
    blk = ids[len(prefix) : len(prefix) + block].tolist()
    assert blk[0] == lay.soi and blk[1] == lay.level_start(0) and blk[-1] == lay.eoi
    assert blk.count(lay.eol) == sum(h for h, _ in grids.values())
    for i in range(len(names)):
        assert blk.count(lay.level_start(i)) == blk.count(lay.level_end(i)) == 1
    # loss only on the answer and eos
    assert (lab != IGNORE).sum() == len(ans) and lab[-len(ans) :].tolist() == ans
    # feature slots carry projector(features), every other position the token embedding
    enc = encode_images(m, [img])[0]
    emb = m.backbone.embed(ids[None])[0]
    start = len(prefix) + 1
    for cb in lay.codebooks:
        h, w = grids[cb.name]
        proj = m.projectors[cb.name](enc["features"][cb.name])  # (h, w, d)
        start += 1  # level start
        for r in range(h):
            got = b.inputs_embeds[0, start + r * (w + 1) : start + r * (w + 1) + w]
            torch.testing.assert_close(got, proj[r])
            torch.testing.assert_close(b.inputs_embeds[0, start + r * (w + 1) + w], emb[start + r * (w + 1) + w])
        start += h * (w + 1) + 1
    torch.testing.assert_close(b.inputs_embeds[0, : len(prefix)], emb[: len(prefix)])


@pytest.mark.parametrize("names", [("pixel",), ("semantic", "pixel")], ids=["1cb", "2cb"])
def test_t2i_labels_are_the_image_block_and_padding_is_masked(names):
    m = make_model(names)
    img = image(1, 32, 64)
    samples = [t2i_sample(img, "a red circle"), und_sample(image(2), "how many shapes are there?", "one")]
    b = assemble(m, samples)
    codes = encode_images(m, [img])[0]["codes"]
    want = image_block_ids(m.layout, codes, (32, 64)) + [m.backbone.text_tokenizer.eos_token_id]
    assert b.labels[0][b.labels[0] != IGNORE].tolist() == want
    assert len(want) == m.layout.image_length(m.tokenizer.grid(32, 64)) + 1
    # right padding: trailing zeros in the mask, no labels there, positions 0..T-1
    short = min(b.lengths)
    r = b.lengths.index(short)
    assert b.attention_mask[r].tolist() == [1] * short + [0] * (b.input_ids.shape[1] - short)
    assert (b.labels[r, short:] == IGNORE).all()
    assert b.position_ids[r].tolist() == list(range(b.input_ids.shape[1]))
    # gradients reach the projectors through the input image of the und sample
    b.inputs_embeds.sum().backward()
    assert all(p.grad is not None for p in m.projectors.parameters())


def test_left_padding_positions(model2):
    b = assemble(model2, [Sample(["hi"]), Sample([image(0), "a much longer prompt than the other"])], "left")
    r = b.lengths.index(min(b.lengths))
    n = b.lengths[r]
    T = b.input_ids.shape[1]
    assert b.attention_mask[r].tolist() == [0] * (T - n) + [1] * n
    assert b.position_ids[r, T - n :].tolist() == list(range(n))


def test_discrete_input_embeds_code_ids():
    m = make_model(image_input="discrete")
    img = image(3)
    b = assemble(m, [Sample([img, "\nwhat?"])])
    codes = encode_images(m, [img])[0]["codes"]
    block = image_block_ids(m.layout, codes)  # no tags on the input side
    n = len(text_ids(m, USER_PREFIX))
    assert b.input_ids[0, n : n + len(block)].tolist() == block
    torch.testing.assert_close(b.inputs_embeds, m.backbone.embed(b.input_ids))


@pytest.mark.parametrize("names", [("pixel",), ("semantic", "pixel")], ids=["1cb", "2cb"])
@pytest.mark.parametrize("size", [(16, 16), (48, 32), (64, 128)])
def test_block_round_trip(names, size):
    m = make_model(names)
    grids = m.tokenizer.grid(*size)
    g = torch.Generator().manual_seed(0)
    codes = {cb.name: torch.randint(0, cb.size, grids[cb.name], generator=g) for cb in m.layout.codebooks}
    for tags in (size, None):
        ids = image_block_ids(m.layout, codes, tags)
        parsed = parse_image_ids(m.layout, ids, grids)
        assert parsed.size == tags
        assert all(torch.equal(parsed.codes[k], codes[k]) for k in codes)
    text = text_ids(m, "here it is")
    found = extract_images(m.layout, text + ids + text + image_block_ids(m.layout, codes, size))
    assert len(found) == 2 and found[1].size == size and torch.equal(found[0].codes["pixel"], codes["pixel"])


def test_parse_errors_name_position_and_token(model2):
    lay = model2.layout
    codes = {"semantic": torch.zeros(1, 2, dtype=torch.long), "pixel": torch.ones(2, 2, dtype=torch.long)}
    ok = image_block_ids(lay, codes, (32, 32))
    # ok = [H, W, SOI, SOL0, s, s, EOL, EOL0, SOL1, p, p, EOL, p, p, EOL, EOL1, EOI]
    pix, sem = lay.codebook("pixel").start, lay.codebook("semantic").start
    cases = {
        "missing eol": (ok[:14] + ok[15:], r"position 14: level 1 \('pixel'\) ends inside a row"),
        "short row": (ok[:9] + [pix, lay.eol] + ok[12:], r"row 1 of level 1 \('pixel'\) has 2 codes, row 0 has 1"),
        "wrong codebook": (
            ok[:4] + [pix] + ok[5:],
            r"position 4: expected a code of codebook 'semantic'.*codebook 'pixel' code 0",
        ),
        "trailing": (ok + [sem], r"position 17: 1 tokens after <end_of_image>"),
        "truncated": (ok[:-1], r"sequence ends at position 16, expected <end_of_image>"),
        "no soi": (ok[:2] + ok[3:], r"position 2: expected <start_of_image> .* got <start_of_level0>"),
        "empty row": (ok[:4] + [lay.eol] + ok[4:], r"position 4: empty row in level 0"),
        "tags swapped": ([ok[1], ok[0]] + ok[2:], r"resolution tags must be <height_H><width_W>"),
    }
    for name, (ids, msg) in cases.items():
        with pytest.raises(ImageSequenceError, match=msg):
            parse_image_ids(lay, ids)
            pytest.fail(name)
    with pytest.raises(ImageSequenceError, match=r"codebook 'pixel' grid is \(2, 2\), expected \(3, 2\)"):
        parse_image_ids(lay, ok, {"pixel": (3, 2)})
    with pytest.raises(ValueError, match="outside"):
        image_block_ids(lay, {"semantic": torch.full((1, 1), 10**6), "pixel": torch.zeros(1, 1, dtype=torch.long)})
    with pytest.raises(KeyError, match="lack codebook 'semantic'"):
        image_block_ids(lay, {"pixel": torch.zeros(1, 1, dtype=torch.long)})


def test_target_from_codes_and_bad_parts(model2):
    codes = {"semantic": torch.zeros(1, 1, dtype=torch.long), "pixel": torch.zeros(2, 2, dtype=torch.long)}
    b = assemble(model2, [Sample([Tag(32, 32), "x"], [TargetImage(codes=codes, size=(32, 32))])])
    assert b.labels[0][b.labels[0] != IGNORE].tolist()[:-1] == image_block_ids(model2.layout, codes, (32, 32))
    with pytest.raises(ValueError, match="needs size"):
        TargetImage(codes=codes)
    with pytest.raises(TypeError, match="unknown sample part int"):
        assemble(model2, [Sample([3])])


@pytest.mark.parametrize("image_input", ["continuous", "discrete"])
def test_image_positions_add_row_and_column_embeddings_to_every_image_token(image_input):
    plain = make_model(image_input=image_input)
    m = make_model(image_input=image_input, image_positions=8)
    assert not any("embed" in k for k in plain.projectors.state_dict())  # off: state dict unchanged
    with torch.no_grad():
        for name, p in m.projectors.items():
            p.load_state_dict(plain.projectors[name].state_dict(), strict=False)  # same MLPs
            p.row_embed.normal_()
            p.col_embed.normal_()
    src, tgt = image(0, 48, 64), image(1, 32, 48)
    samples = [und_sample(src, "what?", "red"), t2i_sample(tgt, "a red circle")]
    b, b0 = assemble(m, samples), assemble(plain, samples)
    assert torch.equal(b.input_ids, b0.input_ids)
    delta = b.inputs_embeds - b0.inputs_embeds  # same weights apart from the position tables
    lay = m.layout
    for row, img in ((0, src), (1, tgt)):
        ids = b.input_ids[row].tolist()
        soi = ids.index(lay.soi)
        start = soi + 1
        grids = m.tokenizer.grid(*img.shape[-2:])
        touched = torch.zeros(len(ids), dtype=torch.bool)
        for cb in lay.codebooks:
            h, w = grids[cb.name]
            start += 1  # level start
            pj = m.projectors[cb.name]
            for r in range(h):
                at = start + r * (w + 1)
                torch.testing.assert_close(delta[row, at : at + w], pj.row_embed[r] + pj.col_embed[:w])
                touched[at : at + w] = True
            start += h * (w + 1) + 1
        assert (delta[row, ~touched] == 0).all()  # text, structure tokens, padding: untouched
    with pytest.raises(ValueError, match="image_positions=2"):
        assemble(make_model(image_input=image_input, image_positions=2), samples)


def test_image_position_tables_start_at_the_backbones_init_scale():
    """The row/column tables are added to code embeddings, so they are drawn at the same scale."""
    for std in (0.02, 0.1):
        m = make_model(image_input="discrete", image_positions=8, initializer_range=std)
        codes = m.backbone.model.get_input_embeddings().weight[m.layout.codebooks[0].start :].detach()
        for pj in m.projectors.values():
            for table in (pj.row_embed, pj.col_embed):
                assert table.std().item() == pytest.approx(std, rel=0.25)
        assert codes.std().item() == pytest.approx(std, rel=0.1)


def test_output_positions_next_moves_each_output_codes_position_onto_the_token_that_predicts_it():
    """``output_positions: next``: a target image's (row, col) embedding sits on the token before each
    code (level start, the previous code, end-of-line), so the query drawing a code knows its cell; input
    images keep theirs on the code itself."""
    slot = make_model(image_input="discrete", image_positions=8)
    nxt = make_model(image_input="discrete", image_positions=8, output_positions="next")
    with torch.no_grad():
        for name, p in nxt.projectors.items():
            p.load_state_dict(slot.projectors[name].state_dict())
            for q in (p, slot.projectors[name]):
                q.row_embed.copy_(torch.randn(q.row_embed.shape, generator=torch.Generator().manual_seed(1)))
                q.col_embed.copy_(torch.randn(q.col_embed.shape, generator=torch.Generator().manual_seed(2)))
    src, tgt = image(0, 32, 32), image(1, 32, 48)
    samples = [edit_sample(src, "make it red", tgt)]
    b, b0 = assemble(nxt, samples), assemble(slot, samples)
    assert torch.equal(b.input_ids, b0.input_ids)
    ids = b.input_ids[0].tolist()
    out_soi = [i for i, t in enumerate(ids) if t == nxt.layout.soi][1]  # the second image is the output
    torch.testing.assert_close(b.inputs_embeds[0, :out_soi], b0.inputs_embeds[0, :out_soi])  # input image: as before
    base = slot.backbone.embed(b.input_ids)[0]
    start = out_soi + 1
    grids = nxt.tokenizer.grid(*tgt.shape[-2:])
    for cb in nxt.layout.codebooks:
        h, w = grids[cb.name]
        pj = nxt.projectors[cb.name]
        for r in range(h):
            first = start + 1 + r * (w + 1)  # this row's first code; the token before it predicts it
            for c in range(w):
                torch.testing.assert_close(
                    b.inputs_embeds[0, first + c - 1] - base[first + c - 1], pj.row_embed[r] + pj.col_embed[c]
                )
            torch.testing.assert_close(b.inputs_embeds[0, first + w - 1], base[first + w - 1])  # predicts end-of-line
        start += 1 + h * (w + 1) + 1


def test_output_positions_is_validated():
    with pytest.raises(ValueError, match="output_positions"):
        from illume_kit.model.unified import UnifiedModel

        UnifiedModel(None, make_model().backbone, None, None, output_positions="prev")


def _counting_encode(m):
    calls = []
    real = m.tokenizer.encode

    def encode(images):
        calls.append(images.shape[0])
        return real(images)

    m.tokenizer.encode = encode
    return calls


@pytest.mark.parametrize("keep_features", [True, False])
def test_encode_cache_gives_the_same_outputs_without_encoding_again(keep_features):
    from illume_kit.model.sequence import EncodeCache

    m = make_model()
    imgs = [image(0), image(1, 32, 64), image(0).clone()]  # the clone is the same content
    plain = encode_images(m, imgs)
    calls = _counting_encode(m)
    m.encode_cache = EncodeCache(keep_features=keep_features)
    first = encode_images(m, imgs, need_features=False)
    again = encode_images(m, imgs, need_features=False)
    assert sum(calls) == 3 and len(m.encode_cache) == 2  # one image per content is kept
    for got in (first, again):
        for g, p in zip(got, plain):
            for name in p["codes"]:
                assert torch.equal(g["codes"][name], p["codes"][name])
    assert m.encode_cache.hits == 3
    # features: served by a cache that keeps them, encoded again by one that does not
    with_feats = encode_images(m, imgs)
    assert sum(calls) == (3 if keep_features else 6)
    for g, p in zip(with_feats, plain):
        for name in p["features"]:
            torch.testing.assert_close(g["features"][name], p["features"][name])
    # a batch assembled through the cache is the batch assembled without it
    samples = [edit_sample(imgs[0], "make it red", imgs[1]), und_sample(imgs[2], "how many?", "one")]
    cached = assemble(m, samples)
    m.encode_cache = None
    fresh = assemble(m, samples)
    assert torch.equal(cached.input_ids, fresh.input_ids) and torch.equal(cached.labels, fresh.labels)
    torch.testing.assert_close(cached.inputs_embeds, fresh.inputs_embeds)


def test_with_a_cache_an_image_is_encoded_alone_so_its_entry_ignores_its_batch_mates():
    """A resumed run starts with an empty cache and meets its images in other batches than the
    uninterrupted run did; a batch of one rounds differently from a batch of many."""
    from illume_kit.model.sequence import EncodeCache

    m = make_model()
    imgs = [image(0), image(1), image(2), image(1).clone()]
    calls = _counting_encode(m)
    encode_images(m, imgs)
    assert calls == [4]  # no cache: the step's images in one batch per size
    m.encode_cache = EncodeCache()
    calls.clear()
    kept = encode_images(m, imgs[:2])
    assert calls == [1, 1]
    mixed = encode_images(m, imgs[1:])  # image 1 (twice) from the cache, image 2 alone
    assert calls == [1, 1, 1] and m.encode_cache.hits == 2
    m.encode_cache = None
    alone = encode_images(m, [imgs[2]])[0]  # without a cache, as a batch of one
    for name in alone["features"]:
        assert torch.equal(mixed[1]["features"][name], alone["features"][name])
        assert torch.equal(mixed[0]["codes"][name], kept[1]["codes"][name])


def test_encode_cache_empties_when_the_tokenizer_weights_change():
    from illume_kit.model.sequence import EncodeCache

    m = make_model()
    m.encode_cache = EncodeCache()
    img = image(3)
    before = encode_images(m, [img])[0]
    calls = _counting_encode(m)
    with torch.no_grad():
        next(iter(m.tokenizer.parameters())).mul_(-1.0)  # an in-place update, as an optimiser step is
    after = encode_images(m, [img])[0]
    assert calls == [1]  # the stale entry was not served
    assert not all(torch.equal(after["features"][n], before["features"][n]) for n in before["features"])
    full = EncodeCache(max_bytes=0)
    m.encode_cache = full
    encode_images(m, [img])
    assert len(full) == 0 and full.bytes == 0  # over its bound: encoded, not kept


def test_level_order_puts_the_named_level_first_in_ids_inputs_and_targets():
    m = make_model(level_order="fine_first")
    lay = m.layout
    assert [cb.name for cb in lay.codebooks] == ["pixel", "semantic"]
    assert lay.codebook("pixel").start == lay.resolution_start + len(lay.resolution_tags)
    assert lay.total_size == lay.codebook("semantic").stop  # the last range, whichever codebook it is
    src, tgt = image(4), image(5)
    b = assemble(m, [edit_sample(src, "make it red", tgt)])
    ids = b.input_ids[0].tolist()
    codes = encode_images(m, [tgt])[0]["codes"]
    target = image_block_ids(lay, codes, (64, 64))
    first = target.index(lay.level_start(0)) + 1
    assert target[first] == codes["pixel"][0, 0].item() + lay.codebook("pixel").start  # pixel codes come first
    assert ids[-len(target) - 1 : -1] == target
    # the input image's first level holds the projected pixel features
    enc = encode_images(m, [src])[0]
    at = ids.index(lay.level_start(0)) + 1
    torch.testing.assert_close(b.inputs_embeds[0, at], m.projectors["pixel"](enc["features"]["pixel"])[0, 0])


def test_level_order_is_checked_and_leaves_one_codebook_alone():
    from illume_kit.model.compose import ComposeError, level_order

    one = make_model(names=("pixel",), level_order="fine_first")
    assert [cb.name for cb in one.layout.codebooks] == ["pixel"]
    with pytest.raises(ComposeError, match="model.level_order must be one of coarse_first, fine_first, got 'reverse'"):
        level_order(one.tokenizer, "reverse")
