"""rfid / fid / lpips / clip-score: known answers on random weights the tests save themselves (nothing downloads)."""

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from illume_kit.core.extras import MissingExtra
from illume_kit.core.protocols import EvalContext, ImagePairs, ScoresGenerations
from illume_kit.eval import image_metrics as im
from illume_kit.eval.metric_params import CLIPScoreParams, LPIPSParams, RFIDParams
from illume_kit.testing.metric_weights import TINY_CLIP, write_tiny_clip


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A randomly initialised FID Inception-v3 state dict, saved as safetensors."""
    from illume_kit.testing.metric_weights import write_random_inception

    return write_random_inception(tmp_path_factory.mktemp("inception") / "inception.safetensors")


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    import lpips

    torch.manual_seed(1)
    net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.pth"
    torch.save(net.state_dict(), path)
    return path


def images(n=8, size=64, seed=0):
    """Smooth random images on uint8 levels (what a PNG holds)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return im.to_uint8(x).float() / 255


def ran_pass(model=None):
    """A context whose reconstruction pass already ran (the metrics were fed by hand)."""
    model = model or SimpleNamespace(detokenizer=object())
    return EvalContext(model, None, None, 8, cache={"reconstruction": {}})


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(inception_file):
    x = images(8)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    values = []
    for sigma in (0.0, 0.05, 0.1, 0.2):
        m = im.RFID(RFIDParams(inception_weights=str(inception_file), feature=64))
        assert isinstance(m, ImagePairs)
        m.update(x[:4], (x[:4] + sigma * noise[:4]).clamp(0, 1))  # two batches, as the pass feeds them
        m.update(x[4:], (x[4:] + sigma * noise[4:]).clamp(0, 1))
        values.append(m.compute(ran_pass())["rfid"])
    assert abs(values[0]) < 1e-3
    assert values[0] < values[1] < values[2] < values[3], values


def test_inception_features_are_torch_fidelity_s_network(inception_file):
    """The wrapper's features are the extractor's own on the same weights (the file really is loaded)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from safetensors.torch import load_file

    state = load_file(str(inception_file))
    wrapped = im.InceptionFeatures(state, 64)
    x = im.to_uint8(images(2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: state)
        direct = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    assert torch.equal(wrapped(x), direct(x)[0])
    zero = {k: torch.zeros_like(v) for k, v in state.items()}
    assert not torch.equal(im.InceptionFeatures(zero, 64)(x), wrapped(x))


def test_lpips_is_zero_on_identical_images_and_equals_the_package(lpips_file):
    import lpips

    m = im.LPIPS(LPIPSParams(weights=str(lpips_file)))
    x, y = images(4, seed=1), images(4, seed=2)
    assert torch.equal(m.distances(x, x), torch.zeros(4))
    net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    net.load_state_dict(torch.load(lpips_file, weights_only=True))
    with torch.no_grad():
        direct = net.eval()(x, y, normalize=True).reshape(4)
    assert torch.allclose(m.distances(x, y), direct, atol=1e-5, rtol=0)
    m.update(x[:2], y[:2])
    m.update(x[2:], y[2:])
    assert m.compute(ran_pass())["lpips"] == pytest.approx(float(direct.double().mean()), abs=1e-5)


def test_lpips_random_backbone_is_an_explicit_choice_with_a_warning():
    with pytest.raises(ValueError, match=r"eval\.metric_params\.lpips\.weights"):
        im.LPIPS(LPIPSParams())
    m = im.LPIPS(LPIPSParams(random_backbone=True))
    with pytest.warns(UserWarning, match="randomly initialised"):
        d = m.distances(images(2, seed=1), images(2, seed=2))
    assert d.shape == (2,) and bool((d > 0).all())


@pytest.fixture()
def tiny_clip(tmp_path, monkeypatch):
    """A tiny open_clip architecture registered from a config dict, its random weights and config saved."""
    import open_clip

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "illume-test-tiny-clip", TINY_CLIP)
    torch.manual_seed(3)
    model = open_clip.create_model("illume-test-tiny-clip", pretrained=None)
    weights, config = tmp_path / "clip.pth", tmp_path / "clip.json"
    torch.save(model.state_dict(), weights)
    config.write_text(json.dumps(TINY_CLIP))
    return model.eval(), weights, config


def test_clip_score_equals_a_direct_open_clip_computation(tiny_clip):
    import open_clip
    from PIL import Image

    model, weights, config = tiny_clip
    captions = ["a red circle", "two blue squares", "a green triangle at the top", "nothing"]
    x = images(4, seed=7)
    # open_clip's own path: its tokenizer, its eval transform on the PIL images
    preprocess = open_clip.image_transform(64, is_train=False)
    pil = [Image.fromarray(im.to_uint8(i).permute(1, 2, 0).numpy()) for i in x]
    with torch.no_grad():
        a = model.encode_image(torch.stack([preprocess(p) for p in pil]))
        b = model.encode_text(open_clip.get_tokenizer("illume-test-tiny-clip")(captions))
    direct = 100 * torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(min=0)
    assert float(direct.max()) > 0  # the check below would pass on all-zero scores otherwise

    for params in (
        CLIPScoreParams(model="illume-test-tiny-clip", weights=str(weights)),
        CLIPScoreParams(model_config_file=str(config), weights=str(weights), batch_size=3),
    ):
        m = im.CLIPScore(params)
        assert isinstance(m, ScoresGenerations)
        assert torch.allclose(m.scores(x, captions), direct, atol=1e-4, rtol=0)
        m.update_generated(x[:2], x[:2], captions[:2])
        m.update_generated(x[2:], x[2:], captions[2:])
        ctx = ran_pass()
        ctx.cache["generation"] = ""  # the pass ran
        assert m.compute(ctx)["clip-score"] == pytest.approx(float(direct.double().mean()), abs=1e-4)


@pytest.mark.parametrize(
    ("build", "param"),
    [
        (lambda: im.RFID(RFIDParams()), "rfid.inception_weights"),
        (lambda: im.FID(im.FIDParams()), "fid.inception_weights"),
        (lambda: im.CLIPScore(CLIPScoreParams()), "clip-score.weights"),
    ],
)
def test_missing_weights_name_the_param_and_how_to_set_it(build, param):
    with pytest.raises(ValueError) as e:
        build()
    assert f"eval.metric_params.{param} in the recipe" in str(e.value)
    assert f"--metric-param {param}=PATH" in str(e.value)


def test_a_weights_file_that_does_not_fit_is_one_clear_error(tmp_path, lpips_file):
    with pytest.raises(ValueError, match=r"'rfid': inception_weights .* is not a file"):
        im.RFID(RFIDParams(inception_weights=str(tmp_path / "absent.pth")))
    m = im.RFID(RFIDParams(inception_weights=str(lpips_file)))
    with pytest.raises(ValueError, match="is not torch-fidelity's FID Inception-v3"):
        m.update(images(2), images(2))


@pytest.mark.parametrize(("module", "build"), [("torchmetrics.image.fid", "rfid"), ("lpips", "lpips")])
def test_a_missing_extra_names_the_install_command(module, build, monkeypatch, inception_file, lpips_file):
    monkeypatch.setitem(sys.modules, module, None)  # the import fails
    m = (
        im.RFID(RFIDParams(inception_weights=str(inception_file), feature=64))
        if build == "rfid"
        else im.LPIPS(LPIPSParams(weights=str(lpips_file)))
    )
    with pytest.raises(MissingExtra, match=r"pip install 'illume-kit\[metrics\]'") as e:
        m.update(images(2), images(2))
    assert f"the {build} metric" in str(e.value)


def test_generation_metrics_skip_a_model_that_cannot_generate(inception_file):
    m = im.FID(im.FIDParams(inception_weights=str(inception_file), feature=64))
    ctx = EvalContext(SimpleNamespace(detokenizer=None, backbone=None), None, [{"image": images(1)[0]}], 4)
    with pytest.warns(UserWarning, match="fid: the model has no detokenizer to draw images with; skipped"):
        assert m.compute(ctx) == {}


@pytest.mark.slow  # two processes that each import torch and build the three networks
def test_two_ranks_that_each_saw_part_of_the_data_report_the_one_process_numbers(inception_file, lpips_file, tmp_path):
    """rfid, lpips and clip-score reduce their state over a torch.distributed group (gloo, 2 processes)."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).with_name("image_metrics_rank_script.py")
    clip_weights, clip_config = write_tiny_clip(tmp_path)
    files = [str(inception_file), str(lpips_file), str(clip_config), str(clip_weights)]
    sys.path.insert(0, str(script.parent))
    try:
        import image_metrics_rank_script as worker
    finally:
        sys.path.remove(str(script.parent))
    single = worker.run(0, 1, *files)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    init = tmp_path / "rendezvous"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", str(init), *files, str(tmp_path / f"rank{r}.json")],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert set(single) == {"rfid", "lpips", "clip-score"} and single["rfid"] > 0 and single["lpips"] > 0
    for got in ranks:
        for k, v in single.items():
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_the_families_are_registered_metrics_through_the_plugin_contract(inception_file, lpips_file, tiny_clip):
    from illume_kit.core.plugins import get_registry
    from illume_kit.core.protocols import capabilities
    from illume_kit.eval.specs import metric_spec
    from illume_kit.testing import conformance

    _, clip_weights, clip_config = tiny_clip
    params = {
        "rfid": {"inception_weights": str(inception_file), "feature": 64},
        "fid": {"inception_weights": str(inception_file)},
        "lpips": {"weights": str(lpips_file)},
        "clip-score": {"model_config_file": str(clip_config), "weights": str(clip_weights)},
    }
    reg = get_registry()
    for name, p in params.items():
        spec = reg.get("metric", name)
        metric = spec.load()(spec.load_params()(**p))
        conformance.metric_contract(lambda metric=metric: metric)
        assert metric_spec(name).goal == metric.goal
        assert capabilities(metric, "metric") == (
            ["ImagePairs"] if name in ("rfid", "lpips") else ["ScoresGenerations"]
        )
    m = reg.get("metric", "rfid").load()(RFIDParams(**params["rfid"]))
    m.update(images(2), images(2, seed=1))
    conformance.check_metric_result(m.compute(ran_pass()), "rfid")
