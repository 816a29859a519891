"""`illume-kit serve` on the shipped tiny checkpoint: its HTTP API (through gradio_client) answers
and draws what `understand` / `generate` / `edit` do, a fixed seed reproduces, requests queue,
limits are refused with a message, and (slow) the page renders in Debian's headless chromium."""

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the serve extra is not installed: pip install 'illume-kit[serve]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from illume_kit.cli.main import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CKPT = str(ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny")
SCENE = str(ROOT / "checkpoints" / "scene.png")
NAME = "dualvitok_qwen2_mllm_tiny"
MAX_PIXELS = 100_000  # the server under test refuses a 400x400 upload
MAX_UPLOAD_MB = 0.05  # and a 100 kB one
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen | None = None, limit: float = 180.0) -> None:
    """Poll ``url`` until it answers (the server loads the model first)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"illume-kit serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {limit:.0f} s")


@pytest.fixture(scope="module")
def url():
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    # the checkpoint twice: the compare tab serves two models
    cmd = [sys.executable, "-m", "illume_kit.cli.main", "serve", CKPT, CKPT, "--port", str(port)]
    cmd += ["--max-pixels", str(MAX_PIXELS), "--max-prompt-chars", "200", "--max-upload-mb", str(MAX_UPLOAD_MB)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = f"http://127.0.0.1:{port}/"
        _wait_up(address, proc)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_understand_answers_what_the_cli_answers(client, capsys):
    served = client.predict(image=handle_file(SCENE), question="what shape is at the center?", api_name="/understand")
    capsys.readouterr()
    assert main(["understand", CKPT, SCENE, "what shape is at the center?"]) == 0
    assert served == capsys.readouterr().out.strip()
    assert served  # the tiny checkpoint answers something


def test_generate_draws_the_cli_images_and_a_seed_reproduces(client, tmp_path):
    out = client.predict(prompt="a small red circle", seed=3, num=2, api_name="/generate")
    assert len(out) == 2
    first, second = (_pixels(o["image"]) for o in out)
    assert first.shape == second.shape == (64, 64, 3)  # the recipe's image size
    again = client.predict(prompt="a small red circle", seed=3, num=2, api_name="/generate")
    assert np.array_equal(first, _pixels(again[0]["image"])) and np.array_equal(second, _pixels(again[1]["image"]))
    other = client.predict(prompt="a small red circle", seed=4, api_name="/generate")
    assert not np.array_equal(first, _pixels(other[0]["image"]))
    assert main(["generate", CKPT, "a small red circle", "--seed", "4", "-o", str(tmp_path / "cli.png")]) == 0
    assert np.array_equal(_pixels(tmp_path / "cli.png"), _pixels(other[0]["image"]))
    # a size and the sampling fields take effect: 64x32 under the given sampling
    wide = client.predict(prompt="a small red circle", size="32x64", cfg=1.0, top_k=5, api_name="/generate")
    assert _pixels(wide[0]["image"]).shape == (32, 64, 3)


def test_edit_draws_the_cli_edit(client, tmp_path):
    out = client.predict(image=handle_file(SCENE), instruction="make the circle blue", seed=1, api_name="/edit")
    assert Image.open(out).size == (64, 64)
    again = client.predict(image=handle_file(SCENE), instruction="make the circle blue", seed=1, api_name="/edit")
    assert np.array_equal(_pixels(out), _pixels(again))
    assert main(["edit", CKPT, SCENE, "make the circle blue", "--seed", "1", "-o", str(tmp_path / "e.png")]) == 0
    assert np.array_equal(_pixels(tmp_path / "e.png"), _pixels(out))


def test_the_docs_client_example_runs(url, monkeypatch, capsys):
    import re

    block = re.search(r"^```python\n(.*?)^```", (ROOT / "docs" / "serve.md").read_text(), flags=re.S | re.M).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in block
    monkeypatch.chdir(ROOT)
    exec(block.replace("http://127.0.0.1:7860/", url), {})
    printed = capsys.readouterr().out
    assert printed.split()[0] and printed.count(".png") == 3, printed


def test_compare_runs_one_request_on_two_checkpoints(client):
    a, images_a, b, images_b = client.predict(
        task="generate", checkpoint_a=NAME, checkpoint_b=f"{NAME}-2", text="a small red circle", seed=3,
        api_name="/compare",
    )  # fmt: skip
    assert a == b == "" and len(images_a) == len(images_b) == 1
    # the same weights at the same recipe settings and seed: the same image, the one /generate draws
    alone = client.predict(prompt="a small red circle", seed=3, api_name="/generate")
    assert np.array_equal(_pixels(images_a[0]["image"]), _pixels(images_b[0]["image"]))
    assert np.array_equal(_pixels(images_a[0]["image"]), _pixels(alone[0]["image"]))
    a, _, b, _ = client.predict(
        task="understand", checkpoint_a=NAME, checkpoint_b=f"{NAME}-2", image=handle_file(SCENE),
        text="how many shapes are there?", api_name="/compare",
    )  # fmt: skip
    assert a == b and a


def test_info_shows_the_composed_model_tree(client):
    text = client.predict(api_name="/info")
    assert f"{NAME}-2" in client.predict(checkpoint=f"{NAME}-2", api_name="/info")
    assert NAME in text and "codebooks" in text and "vocab layout" in text and "Recipe defaults" in text


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(prompt="a red circle " * 20, api_name="/generate"), "this server takes at most 200"),
        (dict(prompt="   ", api_name="/generate"), "the prompt is empty"),
        (dict(prompt="a circle", num=99, api_name="/generate"), "99 is greater than maximum value 8"),
        (dict(prompt="a circle", size="65", api_name="/generate"), "--size 65x65 does not fit this model"),
        (dict(prompt="a circle", top_p=1.5, api_name="/generate"), "1.5 is greater than maximum value 1"),
        (dict(prompt="a circle", per_level='{"temperature": {"nope": 1}}', api_name="/generate"), "unknown level"),
        (dict(checkpoint="other", prompt="a circle", api_name="/generate"), "is not in the list of choices"),
    ],
)
def test_bad_requests_get_one_clear_message(client, call, message):
    with pytest.raises(AppError) as info:
        client.predict(**call)
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def test_an_image_past_the_pixel_limit_is_refused_with_its_size(client, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 400), "white").save(big)
    for call in (
        dict(image=handle_file(str(big)), question="what is it?", api_name="/understand"),
        dict(image=handle_file(str(big)), instruction="make it red", api_name="/edit"),
    ):
        with pytest.raises(AppError) as info:
            client.predict(**call)
        assert "400x400 = 0.2 Mpx; this server takes at most 0.1 Mpx" in str(info.value)
    noisy = tmp_path / "noisy.png"  # 200x200 of noise: a PNG past the 50 kB upload limit, within the pixels
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(noisy)
    with pytest.raises(Exception, match="(?i)(file|upload).*(size|large|exceed)|exceed.*(size|limit)") as info:
        client.predict(image=handle_file(str(noisy)), question="what is it?", api_name="/understand")
    print(f"over-size upload: {type(info.value).__name__}: {info.value}")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a png")
    with pytest.raises(AppError, match="not an image Pillow can read|cannot identify image"):
        client.predict(image=handle_file(str(not_an_image)), question="what is it?", api_name="/understand")


class _Gate:
    """The model's lock as the test holds it: counts the requests that reached the model."""

    def __init__(self) -> None:
        self.lock, self.entered, self.entries = threading.Lock(), threading.Event(), 0

    def __enter__(self):
        self.entries += 1
        self.entered.set()
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


def test_a_second_request_waits_in_the_queue_and_completes():
    """In-process, so the test can hold the model: the first request waits on the model's lock,
    the second waits in Gradio's queue (one request a model), and both finish once it is free."""
    from gradio_client.utils import Status

    from illume_kit.cli.serve_cmds import Limits, Server, launch, load_served

    server = Server(load_served([CKPT], "cpu"), Limits())
    gate = server.served[NAME].lock = _Gate()
    port = _free_port()
    app = launch(server, port=port, block=False)
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        gate.lock.acquire()
        try:
            first = c.submit(prompt="a small red circle", seed=5, api_name="/generate")
            assert gate.entered.wait(timeout=120), first.status()
            second = c.submit(prompt="a large blue star", seed=6, api_name="/generate")
            deadline = time.monotonic() + 120
            while second.status().code != Status.IN_QUEUE:  # the server has it, and holds it back
                assert time.monotonic() < deadline, second.status()
                time.sleep(0.05)
            assert gate.entries == 1 and not first.done() and not second.done()
        finally:
            gate.lock.release()
        a, b = first.result(timeout=120), second.result(timeout=120)
        assert gate.entries == 2 and len(a) == len(b) == 1
        direct = server.generate(NAME, "a large blue star", seed=6)
        assert np.array_equal(_pixels(b[0]["image"]), np.asarray(direct[0]))
    finally:
        app.close()


@pytest.mark.slow
def test_the_page_renders_its_tabs_in_headless_chromium(url, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: `make browser` (or apt-get install chromium) installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    shot = tmp_path / "serve.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle", timeout=60_000)
            tabs = page.get_by_role("tab")
            tabs.first.wait_for(timeout=30_000)
            names = [t.strip() for t in tabs.all_inner_texts()]
            assert {"Understand", "Generate", "Edit", "Compare", "Info"} <= set(names), names
            # each tab shows its own inputs
            for tab, field in (("Understand", "question"), ("Edit", "instruction"), ("Generate", "prompt")):
                page.get_by_role("tab", name=tab).click()
                page.get_by_label(field, exact=True).wait_for(state="visible", timeout=10_000)
            page.get_by_label("prompt", exact=True).fill("a small red circle")
            page.get_by_label("images", exact=True).fill("4")
            page.get_by_role("button", name="Generate").click()
            drawn = page.locator("img[src*='gradio_api/file=']")
            drawn.first.wait_for(state="visible", timeout=60_000)
            assert drawn.count() >= 4
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert Image.open(shot).size[0] == 1280
    print(f"screenshot: {shot}")
