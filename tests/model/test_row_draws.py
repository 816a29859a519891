"""Per-row seeds of the structured sampler: a row's draws come from its own stream."""

import pytest
import torch

from illume_kit.model.sampler import RowDraws


def test_a_row_draws_the_same_whatever_its_batch():
    x = torch.randn(3, 50)
    alone = [RowDraws([s], 8, torch.device("cpu")) for s in (7, 8, 9)]
    together = RowDraws([7, 8, 9], 8, torch.device("cpu"))
    for _ in range(8):
        both = together.draw(x, torch.arange(3))
        assert both.tolist() == [int(d.draw(x[r : r + 1], torch.tensor([0]))[0]) for r, d in enumerate(alone)]


def test_only_the_rows_that_draw_use_up_their_stream():
    x = torch.randn(2, 30)
    a, b = RowDraws([1, 2], 4, torch.device("cpu")), RowDraws([1, 2], 4, torch.device("cpu"))
    a.draw(x[:1], torch.tensor([0]))  # row 0 draws, row 1 is forced this step
    after = a.draw(x, torch.arange(2))
    b.draw(x[:1], torch.tensor([0]))
    assert int(after[1]) == int(b.draw(x[1:], torch.tensor([1]))[0])  # row 1's first draw either way
    assert a.used.tolist() == [2, 1]


def test_draws_follow_the_distribution_and_never_pick_a_masked_id():
    x = torch.full((1, 6), float("-inf"))
    x[0, 1], x[0, 4] = 0.0, torch.log(torch.tensor(3.0))  # p = 1/4, 3/4
    d = RowDraws([3], 4000, torch.device("cpu"))
    picks = torch.stack([d.draw(x, torch.tensor([0]))[0] for _ in range(4000)])
    assert set(picks.tolist()) == {1, 4}
    assert (picks == 4).float().mean().item() == pytest.approx(0.75, abs=0.03)
    d.u.fill_(1.0)  # a uniform that rounds to the total mass still lands on an id with mass
    assert int(d.draw(x, torch.tensor([0]))[0]) == 4
