"""A launcher that runs nothing, and the recipes the sweep tests start from."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VQGAN = ROOT / "recipes/tokenizers/vqgan_tiny.yaml"
DUALVITOK = ROOT / "recipes/tokenizers/dualvitok_tiny.yaml"


class DoneJob:
    def __init__(self, rc: int) -> None:
        self.rc = rc

    def poll(self):
        return self.rc

    def kill(self):
        pass


class FakeLauncher:
    """Records commands; ``train`` makes a checkpoint folder, ``eval`` writes metrics.json.

    ``fail``: run folder names whose step of that name exits 3 (with an error in its log);
    ``metric(folder) -> dict`` gives the metrics a run's eval writes.
    """

    name = "fake"

    def __init__(self, fail: dict[str, str] | None = None, metric=None, interrupt_at: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.metric = metric or (lambda folder: {"rec/psnr": 20.0})
        self.interrupt_at = interrupt_at

    def start(self, cmd, log, cwd):
        self.calls.append(list(cmd))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        verb = cmd[3]
        folder = Path(cmd[4]).parent
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.fail.get(folder.name) == verb:
            log.write_text("Traceback (most recent call last):\nRuntimeError: boom in " + verb + "\n")
            return DoneJob(3)
        if verb == "train":
            (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
        elif verb == "eval":
            out = Path(cmd[cmd.index("-o") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps({"metrics": self.metric(folder)}))
        return DoneJob(0)

    def verbs(self, folder_name: str) -> list[str]:
        return [c[3] for c in self.calls if Path(c[4]).parent.name == folder_name]
