"""Training reports through a callback: a header per stage, then steps with elapsed time and ETA."""

from pathlib import Path

from train_toys import mlp, mse_step, regression_data

from illume_kit.core.recipe import load_recipe
from illume_kit.train.config import TrainerConfig
from illume_kit.train.progress import Clock, PlainReporter, StageHeader, TrainCallback
from illume_kit.train.stages import train
from illume_kit.train.trainer import Trainer

RECIPE = "recipes/tokenizers/siglip_tiny.yaml"
SMALL = [
    "train.stages.0.steps=3",
    "train.stages.0.batch_size=4",
    "train.stages.0.warmup_steps=0",
    "data.params.num_samples=8",
    "data.params.supersample=1",
]


class Recorder:
    def __init__(self):
        self.calls = []

    def stage_start(self, header):
        self.calls.append(("stage_start", header))

    def start(self, total, start, description):
        self.calls.append(("start", total, start, description))

    def update(self, step):
        self.calls.append(("update", step))

    def log(self, step, values):
        self.calls.append(("log", step, dict(values)))

    def message(self, text):
        self.calls.append(("message", text))

    def close(self):
        self.calls.append(("close",))


def test_plain_lines_with_elapsed_and_eta_when_not_a_tty_and_silence_when_quiet(capsys):
    c = TrainerConfig(steps=8, batch_size=8, log_every=4)
    Trainer(mlp(), mse_step, regression_data(), c).fit()
    err = capsys.readouterr().err
    assert "step 4/8" in err and "step 8/8" in err and "loss" in err
    assert "elapsed 0:00:" in err and "eta 0:00:00" in err  # the last row has nothing left
    Trainer(mlp(), mse_step, regression_data(), c, quiet=True).fit()
    assert capsys.readouterr().err == ""


def test_clock_estimates_the_time_left_from_the_steps_done_here():
    now = [100.0]
    clock = Clock(now=lambda: now[0])
    clock.reset(total=10, start=2)  # resumed at step 2: only the steps run now give the rate
    assert clock.eta(2) is None and "eta ?" in clock.describe(2)
    now[0] = 104.0  # 4 s for 2 steps -> 2 s a step, 6 steps left
    assert clock.elapsed() == 4.0 and clock.eta(4) == 12.0
    assert clock.describe(4) == "elapsed 0:00:04  eta 0:00:12"


def test_a_stage_reports_its_header_then_its_steps_to_the_callback(tmp_path):
    rec = Recorder()
    assert isinstance(rec, TrainCallback)
    resolved = load_recipe(RECIPE, [*SMALL, f"run.output_dir={tmp_path / 'run'}"])
    results = train(resolved, only=["teacher"], resume=False, callback=rec)
    assert results["teacher"]["status"] == "done"
    kinds = [c[0] for c in rec.calls]
    assert kinds[:2] == ["stage_start", "start"] and kinds[-1] == "close"
    header = rec.calls[0][1]
    assert isinstance(header, StageHeader)
    assert (header.name, header.target, header.steps) == ("teacher", "teacher", 3)
    assert header.output_dir == Path(tmp_path / "run" / "stages" / "teacher")
    assert "teacher 'siglip-teacher'" in header.trains
    assert rec.calls[1] == ("start", 3, 0, "teacher")
    assert [c[1] for c in rec.calls if c[0] == "update"] == [1, 2]
    assert [c[1] for c in rec.calls if c[0] == "log"] == [3]
    assert all("loss" in c[2] for c in rec.calls if c[0] == "log")


def test_quiet_runs_report_nothing_even_with_a_callback(tmp_path, capsys):
    rec = Recorder()
    resolved = load_recipe(RECIPE, [*SMALL, f"run.output_dir={tmp_path / 'run'}", "train.stages.0.steps=1"])
    train(resolved, only=["teacher"], resume=False, quiet=True, callback=rec)
    assert rec.calls == [] and capsys.readouterr().err == ""


def test_the_header_says_what_trains_how_long_and_where():
    h = StageHeader("gen", "mllm", "the unified model (all)", 500, Path("runs/x/stages/gen"), 2, 3)
    assert h.lines() == ["stage 2/3 'gen' (mllm): trains the unified model (all)", "  500 steps -> runs/x/stages/gen"]
    out = []
    PlainReporter(
        stream=type("S", (), {"write": lambda self, t: out.append(t), "flush": lambda self: None})()
    ).stage_start(h)
    assert "".join(out) == "\n".join(h.lines()) + "\n"
