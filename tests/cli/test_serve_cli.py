"""`illume-kit serve` before any server starts: no gradio (nor torch) at CLI import, and the
failures a user can fix (a missing checkpoint, the extra not installed) as one message, status 2."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CKPT = str(ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny")

# makes `import gradio` fail as it does where the extra is not installed
NO_GRADIO = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "gradio" or name.startswith("gradio."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Block())
from illume_kit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _run(*argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "illume_kit.cli.main", *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_serve_verb_imports_neither_gradio_nor_torch():
    code = (
        "import sys\nfrom illume_kit.cli.main import build_parser\n"
        "build_parser(['serve', '--help'])\n"
        "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    r = _run("serve", "--help")
    assert r.returncode == 0 and "--max-pixels" in r.stdout and "127.0.0.1" in r.stdout


def test_a_missing_checkpoint_is_one_message():
    r = _run("serve", "no/such/checkpoint")
    assert r.returncode == 2, r.stderr
    assert "checkpoint no/such/checkpoint is not a folder" in r.stderr and "Traceback" not in r.stderr


def test_without_the_extra_serve_names_it():
    r = _run("serve", CKPT, code=NO_GRADIO)
    assert r.returncode == 2, r.stderr
    assert "pip install 'illume-kit[serve]'" in r.stderr and "Traceback" not in r.stderr
