"""Every `illume-kit ...` command of README.md runs and does what the README says it does.

The commands are read from the README itself (code blocks, the CLI table, inline code), so a command
added there without a case here fails ``test_every_readme_command_has_a_check``. Each one runs as a
subprocess in a scratch workspace (``recipes``, ``checkpoints`` and ``examples`` linked in, so the
README's relative paths work and every output lands in the scratch folder).

What is shortened, and how (the README's command is otherwise run as written):
- ``train RECIPE``: every stage of the recipe runs 2 steps (``train.stages.N.steps=2``) and the first
  mllm stage retrains its text tokenizer on 32 items (``options.text_corpus_items=32``);
- ``eval CHECKPOINT``: ``-n 2`` instead of the README's sample count;
- ``sweep plan | run | status FILE``: the sweep file is replaced by a copy in the workspace with every
  ``steps:`` set to 2, datasets and evaluations of 2-32 items and one seed;
- ``convert``: the released 2 GB DualViTok file is not available offline, so the README's command
  is run as written and must fail with one clear message naming the missing file (exit 2); the
  conversion itself is tested in tests/plugins/tokenizers/test_dualvitok_convert.py.
Commands that read ``runs/<name>/...`` first run the README command that trains ``<name>`` (and a
training whose recipe reads another run's checkpoint first trains that one).
The results-table chains that appear nowhere else in the README are marked slow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHECKPOINT = "checkpoints/dualvitok_qwen2_mllm_tiny"
SHORT_STEPS = 2
EVAL_N = "2"

# answers the shapes world can give (illume_kit/data/shapes.py): numbers, shapes, colours, sizes,
# positions, yes/no, nothing
from illume_kit.data.shapes import COLOR_NAMES, NUMBER_WORDS, POSITIONS, SHAPES, SIZES  # noqa: E402

VOCABULARY = {*NUMBER_WORDS, *SHAPES, *COLOR_NAMES, *SIZES, *POSITIONS, "yes", "no", "nothing"}


# ---------------------------------------------------------------- reading the README


@dataclass(frozen=True)
class Example:
    command: str  # as written in the README (whitespace normalised)
    stated_output: str | None  # the `# prints: ...` line right after it in a code block, if any
    section: str  # the README section it appears in
    comment: str = ""  # its own trailing `# ...` comment in a code block

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def verb(self) -> str:
        a = self.argv
        return f"{a[1]} {a[2]}" if a[1] == "sweep" else a[1]


def _split_comment(line: str) -> tuple[str, str]:
    """(command, its trailing `# comment`): the first `#` after whitespace and outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


def readme_examples(text: str | None = None) -> list[Example]:
    """Every `illume-kit` command of the README, in order of appearance, each once."""
    text = README.read_text() if text is None else text
    found: list[Example] = []
    section = ""
    in_block, lang, block = False, "", []

    def add(cmd: str, stated: str | None = None, comment: str = "") -> None:
        for part in cmd.split("&&"):
            part = " ".join(part.split())
            if part.startswith("illume-kit ") and part not in {e.command for e in found}:
                found.append(Example(part, stated, section, comment))

    lines = text.splitlines()
    for _i, line in enumerate(lines):
        if line.startswith("```"):
            if in_block:
                if lang in ("bash", "sh", ""):
                    for j, b in enumerate(block):
                        if b.strip().startswith("illume-kit "):
                            nxt = block[j + 1].strip() if j + 1 < len(block) else ""
                            stated = (
                                nxt[1:].strip()
                                if nxt.startswith("#") and not nxt[1:].strip().startswith("illume-kit")
                                else None
                            )
                            stated = stated.removeprefix("prints:").strip() if stated else stated
                            add(*_split_comment(b.strip())[:1], stated, _split_comment(b.strip())[1])
                in_block, block = False, []
            else:
                in_block, lang = True, line[3:].strip()
            continue
        if in_block:
            block.append(line)
            continue
        if line.startswith("#"):
            section = line.lstrip("#").strip()
    # inline code: table cells and prose (a span may wrap onto the next line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for m in re.finditer(r"^(#+ .*)$|`(illume-kit [^`]+)`", prose, flags=re.M):
        if m.group(1):
            section = m.group(1).lstrip("#").strip()
        else:
            add(m.group(2))
    return found


EXAMPLES = readme_examples()


# ---------------------------------------------------------------- the workspace


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("recipes", "checkpoints", "examples"):
            if (ROOT / name).exists():
                (root / name).symlink_to(ROOT / name)
        self.done: dict[str, subprocess.CompletedProcess] = {}
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }

    def run(self, argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
        key = shlex.join(argv)
        if key not in self.done:
            self.done[key] = subprocess.run(
                [sys.executable, "-m", "illume_kit.cli.main", *argv[1:]],
                cwd=self.root,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        return self.done[key]

    def ok(self, argv: list[str]) -> subprocess.CompletedProcess:
        r = self.run(argv)
        assert r.returncode == 0, f"{shlex.join(argv)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"))


def _recipe_of(argv: list[str]) -> str:
    return next(a for a in argv[2:] if not a.startswith("-") and "=" not in a)


def _stage_overrides(recipe: str) -> list[str]:
    from illume_kit.core.recipe import load_recipe

    resolved = load_recipe(ROOT / recipe if (ROOT / recipe).exists() else recipe)
    out = [f"train.stages.{i}.steps={SHORT_STEPS}" for i, _ in enumerate(resolved.recipe.train.stages)]
    mllm = [i for i, s in enumerate(resolved.recipe.train.stages) if s.target == "mllm"]
    if mllm:
        out.append(f"train.stages.{mllm[0]}.options.text_corpus_items=32")
    return out


def _runs_read_by(recipe: str) -> list[str]:
    """Other runs a recipe reads (a tokenizer's `weights:`, a teacher's folder): `runs/<name>/...`."""
    from illume_kit.core.recipe import load_recipe

    resolved = load_recipe(ROOT / recipe)
    own = resolved.recipe.name
    return sorted({n for n in re.findall(r"runs/(\w+)/", resolved.to_yaml()) if n != own})


def _train_example_for(run_name: str) -> Example:
    for e in EXAMPLES:
        if e.verb == "train" and Path(_recipe_of(e.argv)).stem == run_name:
            return e
    raise AssertionError(f"the README reads runs/{run_name} but trains no recipe of that name")


def train(ws: Workspace, ex: Example) -> subprocess.CompletedProcess:
    recipe = _recipe_of(ex.argv)
    for name in _runs_read_by(recipe):
        if not (ws.root / "runs" / name / "checkpoint" / "illume_kit.json").exists():
            train(ws, _train_example_for(name))
    return ws.ok(ex.argv + _stage_overrides(recipe))


def needs_run(ws: Workspace, path: str) -> None:
    m = re.match(r"runs/(\w+)/checkpoint", path)
    if m and not (ws.root / path / "illume_kit.json").exists():
        train(ws, _train_example_for(m.group(1)))


def short_sweep(ws: Workspace, path: str) -> str:
    """A copy of the README's sweep file that trains 2 steps per stage, one seed, tiny data and evals."""
    src = ROOT / path
    dst = ws.root / "short_sweeps" / src.name
    if not dst.exists():
        text = src.read_text()
        base = re.search(r"^base:\s*(\S+)", text, flags=re.M).group(1)
        text = re.sub(r"^base:.*$", f"base: {(src.parent / base).resolve()}", text, flags=re.M)
        text = re.sub(r"\bsteps: \d+(?![.\d])", f"steps: {SHORT_STEPS}", text)  # counts, not quick's fraction
        text = re.sub(r"num_samples: \d+", "num_samples: 32", text)
        text = re.sub(r"^(\s*eval:.*?)num_samples: 32", r"\1num_samples: 2", text, flags=re.M)
        text = re.sub(r"^seeds:.*$", "seeds: [0]", text, flags=re.M)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
    return str(dst)


def sweep_argv(ws: Workspace, argv: list[str]) -> list[str]:
    out = list(argv)
    i = 3
    out[i] = short_sweep(ws, argv[i])
    if argv[2] == "status":  # a status of a finished sweep: run it first
        check_sweep_run(ws, next(e for e in EXAMPLES if e.verb == "sweep run" and e.argv[3] == argv[3]))
    return out


# ---------------------------------------------------------------- what each verb must do


def check_plugins(ws, ex):
    assert "illume-kit" in ws.ok(ex.argv).stdout


def check_list(ws, ex):
    out = ws.ok(ex.argv).stdout
    for name in ("dualvitok", "vqgan", "siglip"):
        assert name in out


def check_show(ws, ex):
    out = ws.ok(ex.argv).stdout
    if ex.argv[2:] == ["tokenizer", "dualvitok"]:
        assert "pixel_codebook_size" in out
    elif ex.argv[2:] == ["dataset", "shapes"]:  # the README says it lists the world's vocabulary
        for word in ("circle", "star", "purple", "large", "top left", "what shape is at the"):
            assert word in out, f"`illume-kit show dataset shapes` does not list {word!r}"
    else:
        assert ex.argv[3] in out


def check_recipes(ws, ex):
    out = ws.ok(ex.argv).stdout
    assert "dualvitok_qwen2_tiny" in out and "tokenizer_ablation" in out


def check_schema(ws, ex):
    schema = json.loads(ws.ok(ex.argv).stdout)
    assert {"tokenizer", "backbone", "train", "eval"} <= set(schema["properties"])


def check_validate(ws, ex):
    ws.ok(ex.argv)


def check_compose(ws, ex):
    out = ws.ok(ex.argv).stdout
    assert "tokenizer" in out and "backbone" in out
    if "-o" in ex.argv:
        assert (ws.root / ex.argv[ex.argv.index("-o") + 1] / "illume_kit.json").is_file()


def check_inspect(ws, ex):
    ck = ex.argv[2]
    if not (ws.root / ck).exists():
        producer = next(e for e in EXAMPLES if e.verb == "compose" and "-o" in e.argv and ck in e.argv)
        ws.ok(producer.argv)
    assert "dualvitok" in ws.ok(ex.argv).stdout


def check_train(ws, ex):
    train(ws, ex)
    from illume_kit.core.recipe import load_recipe

    name = load_recipe(ROOT / _recipe_of(ex.argv)).recipe.name
    assert (ws.root / "runs" / name / "checkpoint" / "illume_kit.json").is_file()


def metric_weights(ws: Workspace, argv: list[str]) -> None:
    """Random stand-ins for the pretrained weights files a README eval names (nothing downloads here)."""
    from illume_kit.testing.metric_weights import write_random_inception, write_random_lpips

    writers = {"inception_weights": write_random_inception, "weights": write_random_lpips}
    for i, a in enumerate(argv[:-1]):
        if a == "--metric-param":
            key, _, value = argv[i + 1].partition("=")
            target = ws.root / value
            if not target.exists():
                writers[key.split(".", 1)[1]](target)


def check_eval(ws, ex):
    ck = ex.argv[2]
    needs_run(ws, ck)
    metric_weights(ws, ex.argv)
    argv = list(ex.argv)
    if "-n" in argv:
        argv[argv.index("-n") + 1] = EVAL_N
    else:
        argv += ["-n", EVAL_N]
    ws.ok(argv)
    metrics = json.loads((ws.root / ck).parent.joinpath("eval", "metrics.json").read_text())["metrics"]
    import yaml

    recipe = yaml.safe_load((ws.root / ck / "recipe.yaml").read_text())
    unified = any(s.get("target") == "mllm" for s in recipe["train"]["stages"])
    if unified:  # the README: task accuracies
        assert {"und/accuracy", "gen/accuracy", "edit/accuracy"} <= set(metrics), sorted(metrics)
    else:  # the README: PSNR, codebook usage, semantic cosine
        assert any(k.startswith(("rec/psnr", "sem/cosine", "code/usage")) for k in metrics), sorted(metrics)


def check_encode(ws, ex):
    ws.ok(ex.argv)
    out = ws.root / ex.argv[ex.argv.index("-o") + 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["items"] == 256 and manifest["features"] == "bf16"
    assert manifest["images"] == sum(s["images"] for s in manifest["shards"]) >= 256


def check_convert(ws, ex):
    r = ws.run(ex.argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert ex.argv[3] in r.stdout + r.stderr and "Traceback" not in r.stderr


def _need_checkpoint():
    if not (ROOT / CHECKPOINT / "illume_kit.json").is_file():
        pytest.skip(f"the shipped checkpoint {CHECKPOINT} is not in this checkout")


def check_understand(ws, ex):
    _need_checkpoint()
    lines = ws.ok(ex.argv).stdout.strip().splitlines()
    answer = lines[-1].strip() if lines else ""
    if ex.stated_output is not None:
        assert answer == ex.stated_output, f"README says {ex.stated_output!r}, the model says {answer!r}"
    else:
        assert answer in VOCABULARY, answer


def _png(ws, ex):
    from PIL import Image

    out = ws.root / ex.argv[ex.argv.index("-o") + 1]
    assert out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG"
        return im.size


def check_generate(ws, ex):
    _need_checkpoint()
    printed = ws.ok(ex.argv).stdout
    num = int(ex.argv[ex.argv.index("--num") + 1]) if "--num" in ex.argv else 1
    h, w = (int(s) for s in ex.argv[ex.argv.index("--size") + 1].split("x")) if "--size" in ex.argv else (64, 64)
    stated = re.search(r"(\d+)x(\d+) PNG", ex.comment)
    assert f"of {h}x{w}" in printed and f"{num} image" in printed, printed
    size = _png(ws, ex)
    if num == 1:
        assert size == (w, h)
    if stated:
        assert size == (int(stated.group(2)), int(stated.group(1)))


def check_edit(ws, ex):
    _need_checkpoint()
    ws.ok(ex.argv)
    assert _png(ws, ex) == (64, 64)  # the checkpoint recipe's image size


def check_serve(ws, ex):
    """The server starts on the README's checkpoint (on a free port) and answers through its API."""
    _need_checkpoint()
    pytest.importorskip("gradio_client", reason="the serve extra is not installed")
    import socket
    import time
    import urllib.request

    from gradio_client import Client, handle_file

    argv = list(ex.argv)
    if "--port" in argv:
        del argv[argv.index("--port") : argv.index("--port") + 2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "illume_kit.cli.main", *argv[1:], "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ws.root, env=ws.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"{ex.command} exited {proc.returncode}:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{ex.command} did not answer at {url}"
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.3)
        scene = str(ws.root / "checkpoints" / "scene.png")
        answer = Client(url, verbose=False).predict(
            image=handle_file(scene), question="how many shapes are there?", api_name="/understand"
        )
        assert answer in VOCABULARY, answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def check_sweep_plan(ws, ex):
    argv = sweep_argv(ws, ex.argv)
    out = ws.ok(argv).stdout
    runs = ws.root / "sweeps" / Path(ex.argv[3]).stem
    assert list(runs.glob("*/recipe.yaml")), out


def check_sweep_run(ws, ex):
    argv = sweep_argv(ws, ex.argv)
    ws.ok(argv + (["--no-live"] if "--no-live" not in argv else []))
    quick = ["--quick"] if "--quick" in argv else []  # the quick variant has a folder of its own
    status = json.loads(ws.ok(["illume-kit", "sweep", "status", argv[3], "--json", *quick]).stdout)
    assert status and {row["status"] for row in status} == {"done"}, status


def check_sweep_status(ws, ex):
    out = ws.ok(sweep_argv(ws, ex.argv)).stdout
    if "--time" in ex.argv:  # where the time went: a row per arm and stage, and the total
        assert "mllm" in out and "steps' summed wall time" in out, out
    else:
        assert "done" in out and "failed" not in out, out


def check_results(ws, ex):
    folder = ws.root / ex.argv[2]
    if not folder.exists():
        run = next(e for e in EXAMPLES if e.verb == "sweep run" and Path(e.argv[3]).stem == folder.name)
        check_sweep_run(ws, run)
    out = ws.ok(ex.argv).stdout
    if "--format" in ex.argv and ex.argv[ex.argv.index("--format") + 1] == "md":
        assert re.search(r"^\|.*variant.*\|", out, flags=re.M), out
    if "--plot" in ex.argv:
        assert (ws.root / ex.argv[ex.argv.index("--plot") + 1]).is_file()


CHECKS = {
    "plugins": check_plugins,
    "list": check_list,
    "show": check_show,
    "recipes": check_recipes,
    "schema": check_schema,
    "validate": check_validate,
    "compose": check_compose,
    "inspect": check_inspect,
    "train": check_train,
    "eval": check_eval,
    "encode": check_encode,
    "convert": check_convert,
    "understand": check_understand,
    "generate": check_generate,
    "edit": check_edit,
    "serve": check_serve,
    "sweep plan": check_sweep_plan,
    "sweep run": check_sweep_run,
    "sweep status": check_sweep_status,
    "results": check_results,
}


def _slow(ex: Example) -> bool:
    return ex.section == "Results" or ex.verb in ("sweep run", "sweep status", "results")


# ---------------------------------------------------------------- the tests


def test_readme_commands_are_found():
    verbs = {e.verb for e in EXAMPLES}
    assert set(CHECKS) <= verbs, f"README lacks an example of {sorted(set(CHECKS) - verbs)}"
    assert any(e.stated_output for e in EXAMPLES if e.verb == "understand"), "no understand example states its answer"


def test_every_readme_command_has_a_check():
    assert {e.verb for e in EXAMPLES} <= set(CHECKS), sorted({e.verb for e in EXAMPLES} - set(CHECKS))


def test_extraction_reads_blocks_tables_and_comments():
    text = (
        '# A\n```bash\nillume-kit understand ck img.png "what shape is at the top left?"  # ask\n# prints: circle\n```\n'
        "| `train` | `illume-kit train r.yaml && illume-kit eval runs/r/checkpoint -n 3` | x |\n"
    )
    got = readme_examples(text)
    assert [e.command for e in got] == [
        'illume-kit understand ck img.png "what shape is at the top left?"',
        "illume-kit train r.yaml",
        "illume-kit eval runs/r/checkpoint -n 3",
    ]
    assert got[0].stated_output == "circle" and got[0].section == "A"


@pytest.mark.parametrize(
    "ex",
    [
        pytest.param(e, id=e.command[len("illume-kit ") :][:80], marks=[pytest.mark.slow] if _slow(e) else [])
        for e in EXAMPLES
    ],
)
def test_readme_command(ws, ex):
    CHECKS[ex.verb](ws, ex)
