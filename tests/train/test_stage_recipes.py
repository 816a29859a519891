"""The shipped ILLUME+ stage recipes' learning-rate groups select what the paper and the official
config name, on the 3B model built on the meta device."""

import re

import pytest

from illume_kit.core.footprint import ENV
from illume_kit.core.recipe import load_recipe
from illume_kit.model.compose import compose
from illume_kit.train.optim import assign_groups


@pytest.fixture(scope="module", autouse=True)
def allow_large():
    # official size: the training estimate exceeds a small machine's memory; --meta allocates nothing
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, "1")
        yield


@pytest.fixture(scope="module")
def names():
    model = compose(load_recipe("recipes/illume_plus/stage3.yaml", unset_missing=True), meta=True)
    return [n for n, _ in model.named_parameters()]


def groups(stage):
    (st,) = load_recipe(f"recipes/illume_plus/{stage}.yaml", unset_missing=True).recipe.train.stages
    return st, [g.model_dump() for g in st.param_groups]


def test_stage3_gives_the_input_encoder_a_tenth_of_the_rate_from_block_16(names):
    st, pg = groups("stage3")
    assert "input_encoder" in st.trainable and st.options.max_seq_len == 4096
    assert st.lr == 2e-5 and {g["lr"] for g in pg if not g.get("freeze")} == {2e-6}
    which = dict(zip(names, assign_groups(names, pg)))
    slow = {n for n, g in which.items() if g >= 0 and not pg[g].get("freeze")}
    frozen = {n for n, g in which.items() if g >= 0 and pg[g].get("freeze")}
    blocks = {int(m.group(1)) for n in slow if (m := re.match(r"input_encoder\.semantic\.blocks\.(\d+)\.", n))}
    assert blocks == set(range(16, 32))  # tune_vit_from_layer 16 of the 32-block ViT
    assert any(n.startswith("input_encoder.semantic.merger.") for n in slow)
    assert any(n.startswith("input_encoder.pixel.") for n in slow)
    assert not any(n.startswith(("backbone.", "projectors.", "tokenizer.")) for n in slow | frozen)
    # what the official config leaves frozen: ViT blocks below 16, the pixel encoder's down levels
    assert any(n.startswith("input_encoder.semantic.blocks.15.") for n in frozen)
    assert any(n.startswith("input_encoder.pixel.down.") for n in frozen)
    assert {n for n in names if n.startswith("input_encoder.")} == slow | frozen


def test_stage1_embedding_rate_and_batches(names):
    st, pg = groups("stage1")
    assert (st.lr, pg[0]["lr"], st.global_batch_size, st.steps) == (1e-3, 2e-4, 1024, 5000)
    which = assign_groups(names, pg)
    assert [n for n, g in zip(names, which) if g == 0] == ["backbone.model.model.embed_tokens.weight"]
    # the global batch splits over usual GPU counts
    assert [st.per_rank_batch(w) for w in (1, 8, 32)] == [32, 4, 1]


def test_the_schedule_runs_the_four_stage_recipes_in_order():
    sched = load_recipe("recipes/illume_plus/schedule.yaml", unset_missing=True).recipe
    assert [st.name for st in sched.train.stages] == ["stage1", "stage2", "stage2_5", "stage3"]
    for st in sched.train.stages:
        (own,) = load_recipe(f"recipes/illume_plus/{st.name}.yaml", unset_missing=True).recipe.train.stages
        assert st.model_dump() == own.model_dump(), st.name
    stage3 = load_recipe("recipes/illume_plus/stage3.yaml", unset_missing=True).recipe
    assert sched.parallelism == stage3.parallelism
    assert sched.model_dump(include={"tokenizer", "backbone", "detokenizer", "model"}) == stage3.model_dump(
        include={"tokenizer", "backbone", "detokenizer", "model"}
    )
