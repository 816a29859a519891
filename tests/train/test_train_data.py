import torch

from illume_kit.train.data import make_loader, step_indices


def test_order_is_a_function_of_seed_and_step():
    full = list(make_loader(list(range(10)), batch_size=4, seed=1, start_step=0, steps=8))
    resumed = list(make_loader(list(range(10)), batch_size=4, seed=1, start_step=5, steps=8))
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed))
    assert len(resumed) == 3
    other_seed = list(make_loader(list(range(10)), batch_size=4, seed=2, start_step=0, steps=8))
    assert any(not torch.equal(a, b) for a, b in zip(full, other_seed))


def test_every_epoch_is_a_permutation_and_epochs_differ():
    stream = [i for s in range(5) for i in step_indices(10, 4, seed=0, step=s)]  # 20 positions, 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]


def test_ranks_split_the_same_global_batch():
    for step in range(6):
        single = step_indices(10, 4, seed=3, step=step, rank=0, world_size=1)
        r0 = step_indices(10, 2, seed=3, step=step, rank=0, world_size=2)
        r1 = step_indices(10, 2, seed=3, step=step, rank=1, world_size=2)
        assert r0 + r1 == single
