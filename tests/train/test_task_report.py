"""The mllm stage says which tasks it trains from which data: one line at setup; a weighted task no
data serves is a warning naming the task and the data, and no served task at all is an error."""

from types import SimpleNamespace

import pytest

from illume_kit.data.mixture import mixture
from illume_kit.data.params import MixtureParams, ShapesParams
from illume_kit.data.shapes import ShapesDataset
from illume_kit.train.mllm_stage import report_tasks, task_report

ALL = {"und": 1.0, "t2i": 1.0, "edit": 1.0}


class Captions:
    """A dataset that says its task kind only (as a stream of captions would)."""

    kind = "captions"

    def __len__(self):
        return 800

    def __getitem__(self, i):
        return {"caption": "a cat"}


def test_shapes_trains_every_task_from_itself():
    line, notes = task_report("mllm", ShapesDataset(ShapesParams(num_samples=1200)), ALL, "shapes")
    assert line == (
        "stage 'mllm': trains und from shapes (1,200 items), t2i from shapes (1,200), edit from shapes (1,200); "
        "weights und 1, t2i 1, edit 1"
    )
    assert notes == []


def test_a_mixture_reports_each_tasks_parts():
    m = mixture(
        MixtureParams(
            parts=[
                {"name": "shapes", "params": {"num_samples": 10, "edits": False}, "samples": 1200},
                {"name": "shapes", "params": {"num_samples": 10}, "samples": 400},
            ]
        )
    )
    line, notes = task_report("mllm", m, {"und": 2.0, "t2i": 1.0, "edit": 0.5}, "mixture")
    assert "und from shapes[0] (1,200 items) + shapes[1] (400)" in line
    assert "edit from shapes[1] (400)" in line and "shapes[0] (1,200)" in line.split("edit from")[0]
    assert line.endswith("weights und 2, t2i 1, edit 0.5") and notes == []


def test_an_unserved_weighted_task_is_named_with_the_data():
    line, notes = task_report("mllm", Captions(), ALL, "captions")
    assert line == "stage 'mllm': trains t2i from captions (800 items); weights und 1, t2i 1, edit 1"
    assert len(notes) == 2
    assert "task und is weighted 1 but no item of captions serves it" in notes[0]
    assert "options.tasks.und: 0" in notes[0] and "task edit" in notes[1]
    # a task weighted 0 is not trained and not warned about
    assert task_report("mllm", Captions(), {"t2i": 1.0, "und": 0.0}, "captions")[1] == []


def test_no_served_task_is_an_error():
    with pytest.raises(ValueError, match=r"no weighted task \(und 1, edit 2\) is served by its data \(captions\)"):
        task_report("mllm", Captions(), {"und": 1.0, "edit": 2.0}, "captions")


def test_a_dataset_that_says_nothing_is_judged_by_its_items():
    items = [{"qa": [("q", "a")]}, {"qa": [("q", "a")], "caption": "c"}]
    line, notes = task_report("mllm", object(), ALL, "custom", items)
    assert "trains und from custom (2 items), t2i from custom (1) (by its first 2 items);" in line
    assert len(notes) == 1 and "task edit" in notes[0]


def test_the_stage_prints_the_line_and_warns():
    lines = []
    runner = SimpleNamespace(
        resolved=SimpleNamespace(components={"data": SimpleNamespace(spec=SimpleNamespace(name="captions"))}),
        callback=SimpleNamespace(message=lines.append),
    )
    stage = SimpleNamespace(name="mllm", options={"tasks": {"t2i": 1.0, "edit": 1.0}})
    with pytest.warns(UserWarning, match="task edit is weighted 1 but no item of captions serves it"):
        report_tasks(runner, stage, Captions())
    assert lines == ["stage 'mllm': trains t2i from captions (800 items); weights t2i 1, edit 1"]
