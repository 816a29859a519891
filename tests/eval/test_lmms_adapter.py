"""The lmms-eval model ``illume_kit`` on the shipped tiny checkpoint: local tasks through lmms-eval
itself, and its loglikelihood / generate_until against direct computations with the model."""

import copy
import importlib
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "checkpoints" / "dualvitok_qwen2_mllm_tiny"
SCENE = ROOT / "checkpoints" / "scene.png"
TASKS = ROOT / "tests" / "fixtures" / "lmms_tasks"
WORDS = ["one", "two", "three"]
N_DOCS = 6


class Req:
    """What lmms-eval hands a model: an object with ``args``."""

    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def lm():
    from illume_kit.eval.lmms import IllumeKitLMM

    return IllumeKitLMM(checkpoint=str(CKPT), device="cpu", batch_size="4")


@pytest.fixture(scope="module")
def scene():
    from PIL import Image

    return Image.open(SCENE).convert("RGB")


def _docs():
    """Held-out shapes scenes (the val split) with their count question."""
    from illume_kit.data.shapes import ShapesDataset, ShapesParams
    from illume_kit.eval.grid import to_pil

    ds = ShapesDataset(ShapesParams(image_size=64, split="val", num_samples=N_DOCS, grid=2, max_objects=2))
    docs = []
    for i in range(N_DOCS):
        item = ds[i]
        q, a = item["qa"][0]
        assert q.startswith("how many")
        docs.append(
            {"image": to_pil(item["image"]), "question": q, "choices": WORDS, "answer": WORDS.index(a), "target": a}
        )
    return docs


@pytest.fixture(scope="module")
def docs():
    return _docs()


def _write_parquet(docs, folder: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("int64"),
            "target": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_list(docs, features=features).to_parquet(str(folder / "shapes_count.parquet"))


def _visual(doc):
    return [doc["image"]]


# ---------------------------------------------------------------- through lmms-eval


def _entry_point_dist(folder: Path) -> Path:
    """A distribution whose only content is pyproject's ``lmms_eval.models`` entry points, so lmms-eval
    resolves ``illume_kit`` the way an installed illume-kit lets it."""
    tomllib = pytest.importorskip("tomllib")  # python >= 3.11
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    info = folder / "illume_kit_lmms_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: illume-kit-lmms-probe\nVersion: 0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in eps.items())
    (info / "entry_points.txt").write_text(f"[lmms_eval.models]\n{lines}")
    return folder


def test_the_entry_point_registers_illume_kit(tmp_path, monkeypatch):
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from illume_kit.eval.lmms import IllumeKitLMM

    monkeypatch.syspath_prepend(str(_entry_point_dist(tmp_path)))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_model_class("illume_kit") is IllumeKitLMM


def test_local_tasks_through_lmms_eval(lm, docs, tmp_path, monkeypatch):
    """simple_evaluate on the local multiple-choice and generation tasks: lmms-eval's scores are the
    ones the model's own likelihoods and greedy answers give."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from illume_kit.eval.lmms import IllumeKitLMM, continuation_logprobs, prompt_of
    from illume_kit.model.sampler import answer

    images = [lm._image(d["image"], "t") for d in docs]
    hits = []
    for d, im in zip(docs, images):
        scores = continuation_logprobs(lm.model, [prompt_of(lm.model, d["question"], [im])] * 3, WORDS)
        hits.append(max(range(3), key=lambda k: float(scores[k][0].sum())) == d["answer"])
    said = answer(lm.model, images, [d["question"] for d in docs], max_new_tokens=8)

    _write_parquet(docs, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    manager = TaskManager("WARNING", include_path=str(TASKS), include_defaults=False)
    out = simple_evaluate(  # lmms-eval frees the model it is given at the end: a model of its own
        model=IllumeKitLMM(checkpoint=str(CKPT), device="cpu", batch_size="4"),
        tasks=["illume_shapes_count_mc", "illume_shapes_count_gen"],
        task_manager=manager,
        log_samples=False,
        verbosity="WARNING",
    )
    mc, gen = out["results"]["illume_shapes_count_mc"], out["results"]["illume_shapes_count_gen"]
    assert mc["acc,none"] == pytest.approx(sum(hits) / len(hits))
    assert gen["exact_match,none"] == pytest.approx(sum(s == d["target"] for s, d in zip(said, docs)) / len(docs))
    assert mc["acc,none"] >= 0.5 and gen["exact_match,none"] >= 0.5  # the tiny model counts its own world


# ---------------------------------------------------------------- loglikelihood


def test_loglikelihood_is_the_sum_of_next_token_logprobs(lm, scene):
    """Each continuation token's log-prob, recomputed one prefix at a time as a generation prompt."""
    from illume_kit.eval.lmms import continuation_logprobs, prompt_of
    from illume_kit.model.sequence import Ids, Sample, assemble

    model = lm.model
    image = lm._image(scene, "t")
    prompt = prompt_of(model, "how many shapes are there?", [image])
    cont = "two shapes"
    ((logp, _),) = continuation_logprobs(model, [prompt], [cont])
    ids = model.backbone.text_tokenizer(cont, add_special_tokens=False)["input_ids"]
    assert logp.shape == (len(ids),)
    n_text = model.layout.text_vocab_size
    for k, t in enumerate(ids):
        batch = assemble(model, [Sample(list(prompt), [Ids(tuple(ids[:k]))], eos=False)], padding_side="left")
        with torch.no_grad():
            last = model.backbone(
                batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).logits[0, -1, :n_text]
        assert float(logp[k]) == pytest.approx(float(torch.log_softmax(last.float(), -1)[t]), abs=1e-4)


def test_loglikelihood_scores_greedy_flag_and_length(lm, scene):
    lm.task_dict = {"t": {"test": [{"image": scene}]}}
    q = "how many shapes are there?"
    said = lm.generate_until([Req(q, {}, _visual, 0, "t", "test")])[0]
    assert said in WORDS
    other = next(w for w in WORDS if w != said)
    reqs = [Req(q, c, _visual, 0, "t", "test") for c in (said, other, said + " " + said)]
    (nll_said, greedy_said), (nll_other, greedy_other), (nll_longer, _) = lm.loglikelihood(reqs)
    assert greedy_said and not greedy_other
    assert 0 <= nll_said < nll_other  # nll: the multiple_choice scorer picks the smallest
    assert nll_longer > nll_said  # a longer continuation is less likely than its prefix
    try:
        lm.score = "logprob"
        ((lp, _),) = lm.loglikelihood(reqs[:1])
        lm.score = "mean_nll"
        ((mean, _),) = lm.loglikelihood(reqs[2:])
    finally:
        lm.score = "nll"
    n = len(lm.model.backbone.text_tokenizer(said + " " + said, add_special_tokens=False)["input_ids"])
    assert lp == pytest.approx(-nll_said) and mean == pytest.approx(nll_longer / n)


def test_likelihood_survives_lmms_eval_response_handling():
    """What lmms-eval 0.7.3 does to a response before its multiple_choice scorer unpacks it."""
    from lmms_eval.api.instance import unwrap_generation_output
    from lmms_eval.api.reasoning import strip_reasoning_tags

    from illume_kit.eval.lmms import Likelihood

    res = Likelihood(1.5, True)
    text, _ = unwrap_generation_output(res)
    text = strip_reasoning_tags(text, [["<think>", "</think>"]])
    lls, greedy = zip(*[text, Likelihood(2.0, False)])  # as the scorer unpacks one document's choices
    assert lls == (1.5, 2.0) and greedy == (True, False)
    assert str(res) == "(1.5, True)"
    again = pickle.loads(pickle.dumps(res))
    assert isinstance(again, Likelihood) and tuple(again) == (1.5, True) and tuple(copy.deepcopy(res)) == (1.5, True)
    value, _ = unwrap_generation_output((1.5, True))  # a plain pair becomes text
    assert isinstance(value, str) and len(list(value)) != 2


def test_text_only_and_placeholder_prompts(lm, scene):
    from illume_kit.eval.lmms import prompt_of

    image = lm._image(scene, "t")
    assert prompt_of(lm.model, "hi", []) == ["hi"]
    parts = prompt_of(lm.model, "a <image> and <image>?", [image, image])
    assert parts[0] == "a " and parts[1] is image and parts[2] == " and " and parts[3] is image
    lm.task_dict = {"t": {"test": [{"x": 1}]}}
    ((nll, _),) = lm.loglikelihood([Req("say two", "two", None, 0, "t", "test")])
    assert math.isfinite(nll) and nll > 0


# ---------------------------------------------------------------- generate_until


def test_generate_until_is_the_greedy_answer_cut_at_until(lm, scene):
    from illume_kit.model.sampler import answer

    lm.task_dict = {"t": {"test": [{"image": scene}]}}
    questions = ["how many shapes are there?", "what color is the circle?", "is there a square?"]
    image = lm._image(scene, "t")
    own = answer(lm.model, [image] * 3, questions, max_new_tokens=16)
    got = lm.generate_until([Req(q, {"max_new_tokens": 16}, _visual, 0, "t", "test") for q in questions])
    assert got == own
    word = own[0]
    cut = lm.generate_until([Req(questions[0], {"until": [word[1:]], "max_new_tokens": 16}, _visual, 0, "t", "test")])
    assert cut == [word[:1]]


def test_images_are_sized_like_understand(lm, scene):
    from PIL import Image

    from illume_kit.data.images import fit_image

    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 50, 100))  # the left quarter is cropped away
    x = fit_image(wide, (64, 64))
    assert x.shape == (3, 64, 64) and float(x[2].max()) < 0.1
    assert lm._image(scene, "t").shape == (3, lm.image_size, lm.image_size)
    with pytest.raises(ValueError, match="reads images"):
        lm._image("clip.mp4", "videos")


def test_dtype_casts_the_language_model_only(scene):
    from illume_kit.eval.lmms import IllumeKitLMM

    half = IllumeKitLMM(checkpoint=str(CKPT), device="cpu", dtype="bfloat16", preprocess="official")
    assert next(half.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(half.model.tokenizer.parameters()).dtype == torch.float32
    half.task_dict = {"t": {"test": [{"image": scene.resize((96, 64))}]}}
    image = half._image(scene.resize((96, 64)), "t")
    assert image.shape[1] < image.shape[2]  # official sizing keeps a wide image wide
    ((nll, _),) = half.loglikelihood([Req("how many shapes are there?", "two", _visual, 0, "t", "test")])
    said = half.generate_until([Req("how many shapes are there?", {}, _visual, 0, "t", "test")])
    assert math.isfinite(nll) and isinstance(said[0], str)


def test_bad_model_args_name_the_key(tmp_path):
    from illume_kit.eval.lmms import IllumeKitLMM

    with pytest.raises(ValueError, match="checkpoint=DIR is required"):
        IllumeKitLMM()
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        IllumeKitLMM(checkpoint=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="dtype=fp8: valid are auto, float32, bfloat16, float16"):
        IllumeKitLMM(checkpoint=str(CKPT), dtype="fp8")
    with pytest.raises(ValueError, match="score=loss: valid are nll, mean_nll, logprob"):
        IllumeKitLMM(checkpoint=str(CKPT), score="loss")
    with pytest.raises(ValueError, match="batch_size=0: expected at least 1"):
        IllumeKitLMM(checkpoint=str(CKPT), batch_size="0")
    with pytest.raises(ValueError, match="arg temperature: unknown; valid are checkpoint, device, dtype"):
        IllumeKitLMM(checkpoint=str(CKPT), temperature="1")
    with pytest.raises(ValueError, match="preprocess=square: valid are plain, official"):
        IllumeKitLMM(checkpoint=str(CKPT), preprocess="square")
    with pytest.raises(ValueError, match="batch_size=auto: expected an integer"):
        IllumeKitLMM(checkpoint=str(CKPT), batch_size="auto")


def test_missing_extra_names_the_lmms_extra(monkeypatch):
    from illume_kit.core.extras import MissingExtra

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.split(".")[0] == "lmms_eval":
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    monkeypatch.delitem(sys.modules, "illume_kit.eval.lmms", raising=False)
    with pytest.raises(MissingExtra, match=r"lmms-eval adapter needs the 'lmms_eval' package.*illume-kit\[lmms\]"):
        real("illume_kit.eval.lmms")


# ---------------------------------------------------------------- the lmms-eval command


@pytest.mark.slow
def test_lmms_eval_command(docs, tmp_path):
    """``lmms-eval --model illume_kit --model_args checkpoint=DIR --tasks ...`` in a subprocess, the
    model found through the entry point."""
    _write_parquet(docs, tmp_path)
    dist = _entry_point_dist(tmp_path / "dist")
    env = {
        **__import__("os").environ,
        "PYTHONPATH": f"{dist}:{ROOT}",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),
    }
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "illume_kit", "--model_args",
           f"checkpoint={CKPT},device=cpu", "--batch_size", "4", "--tasks", "illume_shapes_count_mc",
           "--include_path", str(TASKS), "--output_path", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*results*.json")]
    assert results and "acc,none" in results[0]["results"]["illume_shapes_count_mc"]
