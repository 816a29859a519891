import random

import numpy as np
import pytest
import torch

from illume_kit.train import state as S
from illume_kit.train.optim import lr_factor, scheduler


def leftovers(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_interrupted_save_leaves_no_partial_folder_and_keeps_latest(tmp_path):
    model = torch.nn.Linear(3, 2)
    first = S.save_checkpoint(tmp_path, 1, {"model": model}, {"step": 1})
    assert S.latest_checkpoint(tmp_path) == first

    def boom(folder):
        assert (folder / "model.safetensors").is_file()  # mid-save: weights already written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.save_checkpoint(tmp_path, 2, {"model": model}, {"step": 2}, extra_writer=boom)
    assert not (tmp_path / S.step_dirname(2)).exists()
    assert leftovers(tmp_path) == []
    assert S.latest_checkpoint(tmp_path) == first
    assert S.load_checkpoint(first, {"model": torch.nn.Linear(3, 2)})["step"] == 1


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    target = tmp_path / "ckpt"
    with S.atomic_dir(target) as d:
        (d / "a.txt").write_text("old")
        (d / "only_old.txt").write_text("x")
    with pytest.raises(RuntimeError):
        with S.atomic_dir(target) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError
    assert (target / "a.txt").read_text() == "old"
    with S.atomic_dir(target) as d:
        (d / "a.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "new"
    assert leftovers(tmp_path) == []


def test_keep_last_prunes_and_load_rejects_mismatched_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    for step in (1, 2, 3):
        S.save_checkpoint(tmp_path, step, {"model": model}, {"step": step}, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (tmp_path / S.LATEST).read_text().strip() == "step_00000003"
    with pytest.raises(RuntimeError, match="does not match"):
        S.load_checkpoint(tmp_path / "step_00000003", {"model": torch.nn.Sequential(torch.nn.Linear(3, 2))})
    with pytest.raises(RuntimeError, match="size mismatch"):
        S.load_checkpoint(tmp_path / "step_00000003", {"model": torch.nn.Linear(4, 2)})


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    S.seed_everything(5)
    torch.randn(3), np.random.rand(), random.random(), np.random.randn()  # leave numpy with a cached gaussian
    state = S.capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    want = (torch.randn(4), np.random.randn(3), random.random(), random.gauss(0, 1))
    S.seed_everything(99)
    S.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.randn(4), np.random.randn(3), random.random(), random.gauss(0, 1))
    assert torch.equal(want[0], got[0])
    assert np.array_equal(want[1], got[1])
    assert want[2:] == got[2:]


def test_lr_schedule_warmup_cosine_and_constant(tmp_path):
    f = lambda s, sched="cosine", mr=0.0: lr_factor(s, total=110, warmup=10, schedule=sched, min_ratio=mr)  # noqa
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert f(110, mr=0.1) == pytest.approx(0.1)
    assert f(50, "constant") == 1.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sch = scheduler(opt, total=110, warmup=10, schedule="cosine")
    lrs = []
    for _ in range(11):
        lrs.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[10] == pytest.approx(2.0)
    torch.save(sch.state_dict(), tmp_path / "s.pt")
    again = scheduler(opt, total=110, warmup=10, schedule="cosine")
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert again.get_last_lr() == sch.get_last_lr()
