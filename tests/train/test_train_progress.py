import io
import sys

from illume_kit.train.config import TrainerConfig
from illume_kit.train.progress import TrainProgress
from illume_kit.train.trainer import Trainer
from train_toys import mlp, mse_step, regression_data


def test_plain_lines_when_not_a_tty_and_silence_when_quiet(capsys):
    c = TrainerConfig(steps=8, batch_size=8, log_every=4)
    Trainer(mlp(), mse_step, regression_data(), c).fit()
    err = capsys.readouterr().err
    assert "step 4/8" in err and "step 8/8" in err and "loss" in err
    Trainer(mlp(), mse_step, regression_data(), c, quiet=True).fit()
    assert capsys.readouterr().err == ""


def test_live_bar_on_a_terminal(monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    bar = TrainProgress(total=10, start=2)
    assert bar.live
    bar.update(5)
    bar.log(10, {"loss": 0.125, "lr": 1e-3})
    bar.close()
    out = fake.getvalue()
    assert "10/10" in out and "loss 0.125" in out
