"""``illume-kit train`` renders training's callback with rich: header, live bar on a terminal."""

import io
import sys
from pathlib import Path

from illume_kit.cli.train_progress import RichReporter
from illume_kit.train.progress import StageHeader, TrainCallback


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_live_bar_with_elapsed_and_time_left_on_a_terminal(monkeypatch):
    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    bar = RichReporter()
    assert isinstance(bar, TrainCallback) and bar.live
    bar.stage_start(StageHeader("tok", "tokenizer", "tokenizer 'vqgan'", 10, Path("runs/x/stages/tok")))
    bar.start(10, 2, "tok")
    bar.update(5)
    bar.log(10, {"loss": 0.125, "lr": 1e-3})
    bar.close()
    out = fake.getvalue()
    assert "stage 1/1 'tok' (tokenizer): trains tokenizer 'vqgan'" in out and "10 steps -> runs/x/stages/tok" in out
    assert "10/10" in out and "loss 0.125" in out and "0:00:0" in out  # elapsed / remaining columns


def test_plain_lines_when_stderr_is_not_a_terminal(capsys):
    rep = RichReporter()
    assert not rep.live
    rep.start(4, 0, "tok")
    rep.log(4, {"loss": 0.5})
    err = capsys.readouterr().err
    assert "step 4/4  loss 0.5  elapsed 0:00:00  eta 0:00:00" in err


def test_the_cli_prints_a_header_per_stage_to_stderr_and_keeps_json_on_stdout(tmp_path, capsys):
    import json

    from illume_kit.cli.main import main

    small = [
        "train.stages.0.steps=2",
        "train.stages.0.batch_size=4",
        "train.stages.0.warmup_steps=0",
        "data.params.num_samples=8",
        "data.params.supersample=1",
    ]
    assert (
        main(
            [
                "train",
                "recipes/tokenizers/siglip_tiny.yaml",
                *small,
                f"run.output_dir={tmp_path}",
                "--stage",
                "teacher",
                "--json",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert json.loads(out)["teacher"]["status"] == "done"
    assert "'teacher' (teacher): trains teacher 'siglip-teacher'" in err
    assert f"2 steps -> {tmp_path / 'stages' / 'teacher'}" in err and "step 2/2" in err
