"""Image-distribution metrics of ``illume-kit eval``: ``rfid``, ``fid``, ``lpips``, ``clip-score``.

Each is a registered ``metric`` family whose one result carries the family's name:

- ``rfid``: Fréchet Inception distance between the eval images and their reconstructions (tokenizer
  codes -> detokenizer), fed batch by batch by the reconstruction pass (``core.protocols.ImagePairs``);
- ``lpips``: mean LPIPS distance (Zhang et al. 2018, the ``lpips`` package) over the same pairs;
- ``fid``: the same distance between the eval images and images the unified model generates from
  their captions (guidance and sampling of ``eval.options``, as ``gen/*``);
- ``clip-score``: mean ``100 * max(cos, 0)`` between a CLIP model's embeddings of each generated image
  and of its caption (torchmetrics' convention), with an open_clip model; ``fid`` and ``clip-score``
  share one generation pass (``core.protocols.ScoresGenerations``).

The FID protocol is the one torch-fidelity implements and the official ILLUME+ tokenizer evaluation
runs (``vision_tokenizer/tokenizer/reconstruction_vq_ddp.py`` saves uint8 PNGs and calls
``torch_fidelity.calculate_metrics``): both image sets are quantised to uint8, resized to 299x299 by
torch-fidelity's TF1-compatible bilinear resize and read by the 2015-12-05 FID Inception-v3 in
float32; the pool3 features (2048) give mean and covariance per set, accumulated in float64
(torchmetrics' ``FrechetInceptionDistance``, which all-reduces them over torch.distributed ranks on
``compute``). As in the official code, a x2 detokenizer's output is compared at the token
resolution (downsampled, against the input image). Every network's weights come from a local file
named by a param: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from illume_kit.core.extras import require
from illume_kit.core.protocols import EvalContext, ImagePairs, ScoresGenerations
from illume_kit.eval.metric_params import CLIPScoreParams, FIDParams, InceptionParams, LPIPSParams, RFIDParams

WHERE = "docs/evaluation.md#metrics"


def missing_weights(family: str, param: str, what: str) -> ValueError:
    return ValueError(
        f"metric {family!r} needs {what}: set eval.metric_params.{family}.{param} in the recipe or "
        f"--metric-param {family}.{param}=PATH on the command line ({WHERE} says where to get it)"
    )


def check_file(path: str | None, family: str, param: str, what: str) -> Path:
    """The file ``param`` names, or a ValueError naming the param and how to set it."""
    if not path:
        raise missing_weights(family, param, what)
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"metric {family!r}: {param} {str(path)!r} is not a file ({what})")
    return p


def load_state_dict(path: str | None, family: str, param: str, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a torch file read with ``weights_only=True``."""
    p = check_file(path, family, param, what)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file or a pickle that needs code
        raise ValueError(f"metric {family!r}: {param} {str(p)!r} is not a readable weights file: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"metric {family!r}: {param} {str(p)!r} holds no state dict of tensors")
    return state


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], family: str, param: str, path: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(f"metric {family!r}: {param} {path!r} does not fit the network: {' '.join(first)}") from exc


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 levels as a PNG stores them (rounded)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def _quantized(images: torch.Tensor) -> torch.Tensor:
    return to_uint8(images).float() / 255


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _reduce_device(model: Any) -> torch.device:
    """Where a metric's state goes before ``compute`` reduces it: the NCCL group's GPU, a gloo group's CPU,
    or the model's device without a group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return _device(model)


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


# ---------------------------------------------------------------- Inception distances


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception-v3 (``FeatureExtractorInceptionV3``) on uint8 images: (B, feature)."""

    def __init__(self, state: dict[str, torch.Tensor], feature: int = 2048, family: str = "rfid", path: str = ""):
        super().__init__()
        fe = require("torch_fidelity.feature_extractor_inceptionv3", "metrics", f"the {family} metric")
        # its constructor reads the weights itself, from a URL or with an unrestricted torch.load: it is
        # handed the state dict already read from the local file instead
        fetch = fe.load_state_dict_from_url
        fe.load_state_dict_from_url = lambda *a, **k: state
        try:
            self.net = fe.FeatureExtractorInceptionV3("inception-v3-compat", [str(feature)])
        except RuntimeError as exc:
            raise ValueError(
                f"metric {family!r}: inception_weights {path!r} is not torch-fidelity's FID Inception-v3: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        finally:
            fe.load_state_dict_from_url = fetch
        self.num_features = int(feature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0].reshape(images.shape[0], -1)


def inception_distance(params: InceptionParams, family: str):
    """A torchmetrics ``FrechetInceptionDistance`` over torch-fidelity's Inception from the local file."""
    fid = require("torchmetrics.image.fid", "metrics", f"the {family} metric")
    what = "torch-fidelity's FID Inception-v3 weights"
    state = load_state_dict(params.inception_weights, family, "inception_weights", what)
    net = InceptionFeatures(state, params.feature, family, str(params.inception_weights))
    return fid.FrechetInceptionDistance(feature=net, normalize=False)


class _InceptionDistance:
    Params = InceptionParams
    goal = "min"
    family = ""

    def __init__(self, params: InceptionParams | None = None) -> None:
        self.params = params or self.Params()
        check_file(self.params.inception_weights, self.family, "inception_weights", "FID Inception-v3 weights")
        self._metric = None

    def _update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        if self._metric is None:
            self._metric = inception_distance(self.params, self.family)
        m = self._metric.to(real.device)
        bs = self.params.batch_size
        for lo in range(0, real.shape[0], bs):
            m.update(to_uint8(real[lo : lo + bs]), real=True)
            m.update(to_uint8(fake[lo : lo + bs]).to(real.device), real=False)

    def _distance(self, ctx: EvalContext) -> dict[str, float]:
        if self._metric is None:
            self._metric = inception_distance(self.params, self.family)
        try:  # every rank calls compute: torchmetrics sums the feature statistics over ranks there
            value = self._metric.to(_reduce_device(ctx.model)).compute()
        except RuntimeError as exc:
            if "More than one sample" not in str(exc):
                raise
            raise ValueError(
                f"metric {self.family!r} needs at least 2 images in each set (eval.num_samples / -n)"
            ) from exc
        return {self.family: float(value)}


class RFID(_InceptionDistance):
    """``rfid``: FID of the reconstructions against the eval images (lower is better)."""

    Params = RFIDParams
    family = "rfid"

    def update(self, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        self._update(reference, candidate)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if not reconstructed(ctx, self):
            return {}
        return self._distance(ctx)


class FID(_InceptionDistance):
    """``fid``: FID of images generated from the eval captions against the eval images (lower is better)."""

    Params = FIDParams
    family = "fid"

    def update_generated(self, reference: torch.Tensor, generated: torch.Tensor, captions: list[str]) -> None:
        self._update(reference, generated)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if not generated(ctx, self):
            return {}
        return self._distance(ctx)


# ---------------------------------------------------------------- LPIPS


def _mean(family: str):
    agg = require("torchmetrics.aggregation", "metrics", f"the {family} metric")
    return agg.MeanMetric().set_dtype(torch.float64)  # sums over torch.distributed ranks on compute


@contextlib.contextmanager
def _quiet_torchvision():
    """lpips builds its backbone with torchvision's deprecated ``pretrained=`` argument: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
        yield


def _both_lin_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lpips.LPIPS holds each linear layer twice, as ``lin<k>`` and ``lins.<k>`` (one tensor): a file
    may carry either name (safetensors keeps one, the package's own linear weights use ``lin<k>``)."""
    out = dict(state)
    for key, value in state.items():
        for a, b in ((r"^lin(\d+)\.", r"lins.\1."), (r"^lins\.(\d+)\.", r"lin\1.")):
            twin = re.sub(a, b, key)
            if twin != key:
                out.setdefault(twin, value)
    return out


class LPIPS:
    """``lpips``: mean LPIPS distance of the reconstructions to the eval images (lower is better)."""

    Params = LPIPSParams
    goal = "min"
    family = "lpips"

    def __init__(self, params: LPIPSParams | None = None) -> None:
        self.params = params or LPIPSParams()
        if not self.params.random_backbone:
            check_file(self.params.weights, "lpips", "weights", f"an lpips.LPIPS {self.params.net} state dict")
        self._net = None
        self._mean = None

    def network(self) -> nn.Module:
        if self._net is None:
            lpips = require("lpips", "metrics", "the lpips metric")
            p = self.params
            if p.weights:
                with _quiet_torchvision():
                    net = lpips.LPIPS(pretrained=False, net=p.net, pnet_rand=True, verbose=False)
                state = load_state_dict(p.weights, "lpips", "weights", f"an lpips.LPIPS {p.net} state dict")
                _load_strict(net, _both_lin_names(state), "lpips", "weights", p.weights)
            else:
                warnings.warn(
                    "lpips: random_backbone: the backbone is randomly initialised, the number is uncalibrated "
                    "(set eval.metric_params.lpips.weights for the real LPIPS)",
                    stacklevel=2,
                )
                with _quiet_torchvision():
                    net = lpips.LPIPS(pretrained=True, net=p.net, pnet_rand=True, verbose=False)
            self._net = net.eval().requires_grad_(False)
            self._mean = _mean("lpips")
        return self._net

    @torch.no_grad()
    def distances(self, reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """(B,) LPIPS of each pair, images in [0, 1]."""
        net = self.network().to(reference.device)
        d = net(reference.float(), candidate.float().to(reference.device), normalize=True)
        return d.reshape(reference.shape[0])

    def update(self, reference: torch.Tensor, candidate: torch.Tensor) -> None:
        d = self.distances(reference, candidate)
        self._mean.to(d.device).update(d.double())

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if not reconstructed(ctx, self):
            return {}
        self.network()
        return {"lpips": float(self._mean.to(_reduce_device(ctx.model)).compute())}


# ---------------------------------------------------------------- CLIP score


class CLIPScore:
    """``clip-score``: mean ``100 * max(cos, 0)`` of CLIP image and caption embeddings of the images
    generated from the eval captions (higher is better)."""

    Params = CLIPScoreParams
    goal = "max"
    family = "clip-score"

    def __init__(self, params: CLIPScoreParams | None = None) -> None:
        self.params = params or CLIPScoreParams()
        check_file(self.params.weights, self.family, "weights", "open_clip model weights")
        if self.params.model_config_file:
            check_file(self.params.model_config_file, self.family, "model_config_file", "an open_clip model config")
        self._model = None
        self._mean = None

    def model(self) -> nn.Module:
        if self._model is None:
            import open_clip

            p = self.params
            if p.model_config_file:
                cfg = json.loads(Path(p.model_config_file).expanduser().read_text())
                model = _open_clip_from_config(cfg, p.model_config_file)
            else:
                if open_clip.get_model_config(p.model) is None:
                    raise ValueError(
                        f"metric 'clip-score': model {p.model!r} is not an architecture open_clip ships "
                        f"(e.g. ViT-B-32, ViT-L-14); or give model_config_file"
                    )
                cfg = open_clip.get_model_config(p.model)
                _no_hf(cfg, p.model)
                model = open_clip.create_model(p.model, pretrained=None, device="cpu")
            state = load_state_dict(p.weights, self.family, "weights", "open_clip model weights")
            _load_strict(model, state, self.family, "weights", p.weights)
            self._model = model.eval().requires_grad_(False)
            self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=int(model.context_length))
            self._mean = _mean(self.family)
        return self._model

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's evaluation transform on tensors: shorter side to the model's size (bicubic),
        centre crop, normalise."""
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        from open_clip.model import get_model_preprocess_cfg

        cfg = get_model_preprocess_cfg(self._model)
        size = cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = _quantized(images)
        h, w = x.shape[-2:]
        if (h, w) != size:
            scale = max(size[0] / h, size[1] / w)
            nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
            x = x[..., top : top + size[0], left : left + size[1]]
        mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def scores(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """(B,) CLIP score of each image (B, 3, H, W) in [0, 1] against its caption."""
        model = self.model().to(images.device)
        out = []
        bs = self.params.batch_size
        for lo in range(0, images.shape[0], bs):
            img = model.encode_image(self._pixels(images[lo : lo + bs]))
            txt = model.encode_text(self._tokenizer(list(captions[lo : lo + bs])).to(images.device))
            cos = F.cosine_similarity(img.float(), txt.float(), dim=-1)
            out.append(100 * cos.clamp(min=0))
        return torch.cat(out)

    def update_generated(self, reference: torch.Tensor, generated: torch.Tensor, captions: list[str]) -> None:
        s = self.scores(generated, captions)
        self._mean.to(s.device).update(s.double())

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if not generated(ctx, self):
            return {}
        self.model()
        return {self.family: float(self._mean.to(_reduce_device(ctx.model)).compute())}


def _no_hf(cfg: dict, what: str) -> None:
    text = cfg.get("text_cfg") or {}
    if text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        raise ValueError(
            f"metric 'clip-score': {what} uses a Hugging Face text tower or tokenizer, which is not supported "
            "(it would download); choose an open_clip architecture with its own text transformer"
        )


def _open_clip_from_config(cfg: Any, path: str) -> nn.Module:
    import open_clip

    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ValueError(
            f"metric 'clip-score': model_config_file {path!r} is not an open_clip model config "
            "(needs embed_dim, vision_cfg, text_cfg)"
        )
    _no_hf(cfg, f"model_config_file {path!r}")
    cfg = dict(cfg)
    cfg.pop("custom_text", None)
    cfg.pop("preprocess_cfg", None)
    vision, text = dict(cfg.pop("vision_cfg")), dict(cfg.pop("text_cfg"))
    vision["timm_model_pretrained"] = False
    try:
        return open_clip.CLIP(vision_cfg=vision, text_cfg=text, **cfg)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"metric 'clip-score': model_config_file {path!r} does not build: {exc}") from exc


# ---------------------------------------------------------------- the passes that feed them


def families(ctx: EvalContext) -> dict[str, Any]:
    """The metric families ``eval`` built for this evaluation (``compute_metrics`` fills it)."""
    return ctx.cache.setdefault("metric_families", {})


def reconstructed(ctx: EvalContext, metric: Any) -> bool:
    """Run the reconstruction pass with ``metric`` among its ``ImagePairs`` if it has not run; False
    (with a warning) when the model has no detokenizer to reconstruct images with."""
    if "reconstruction" not in ctx.cache:
        families(ctx).setdefault(metric.family, metric)
        from illume_kit.eval.families import Reconstruction

        Reconstruction().compute(ctx)
    if getattr(ctx.model, "detokenizer", None) is None:
        warnings.warn(
            f"{metric.family}: the model has no detokenizer to reconstruct images with; skipped", stacklevel=2
        )
        return False
    return True


def generated(ctx: EvalContext, metric: Any) -> bool:
    """Run the generation pass once for every ``ScoresGenerations`` family of this evaluation;
    False (with a warning saying why) when the model or the data cannot generate."""
    if "generation" not in ctx.cache:
        families(ctx).setdefault(metric.family, metric)
        consumers = [m for m in families(ctx).values() if isinstance(m, ScoresGenerations)]
        ctx.cache["generation"] = generation_pass(ctx, consumers)
    reason = ctx.cache["generation"]
    if reason:
        warnings.warn(f"{metric.family}: {reason}; skipped", stacklevel=2)
        return False
    return True


def pair_metrics(ctx: EvalContext) -> list[ImagePairs]:
    return [m for m in families(ctx).values() if isinstance(m, ImagePairs)]


def cannot_generate(ctx: EvalContext) -> str:
    """Why this model and eval set cannot give generated images ("" when they can)."""
    model = ctx.model
    if getattr(model, "detokenizer", None) is None:
        return "the model has no detokenizer to draw images with"
    if getattr(model, "backbone", None) is None:
        return "the model has no language backbone to generate with"
    n = min(ctx.num_samples, len(ctx.dataset))
    if n < 1 or not ctx.dataset[0].get("caption"):
        return "the eval set's items have no captions to generate from"
    return ""


@torch.no_grad()
def generation_pass(ctx: EvalContext, consumers: Sequence[ScoresGenerations]) -> str:
    """Images generated from the first ``num_samples`` captions, batch by batch, handed to each
    consumer with the eval images; returns why nothing was generated ("" when it ran).

    Batch ``b`` is drawn with seed ``run.seed + b`` (as ``gen/*``); under torch.distributed each rank
    draws every world-size-th batch, so the images equal the single-process ones."""
    reason = cannot_generate(ctx)
    if reason or not consumers:
        return reason
    from illume_kit.core.options import EvalOptions
    from illume_kit.eval.evaluate import _progress
    from illume_kit.eval.sampling import task_sampling
    from illume_kit.model.sampler import decode_images, generate_images

    model = ctx.model
    opts = ctx.options if ctx.options is not None else EvalOptions()
    sampling = task_sampling(opts, "generate")
    cfg = sampling.pop("cfg")
    decode = dict(ctx.decode)
    seed = int(ctx.resolved.recipe.run.seed) if ctx.resolved is not None else 0
    n, bs = min(ctx.num_samples, len(ctx.dataset)), opts.batch_size
    rank, world = _dist()
    dev = _device(model)
    mine = [b for b in range(-(-n // bs)) if b % world == rank]
    was_training = model.training
    model.eval()
    try:
        with _progress(f"generate (cfg {cfg:g})", ctx.quiet) as prog:
            task = prog.add_task("generate", total=sum(min(n, (b + 1) * bs) - b * bs for b in mine))
            for b in mine:
                items = [ctx.dataset[i] for i in range(b * bs, min(n, (b + 1) * bs))]
                captions = [str(it["caption"]) for it in items]
                sizes = [(int(it["image"].shape[-2]), int(it["image"].shape[-1])) for it in items]
                codes = generate_images(model, captions, sizes, cfg=cfg, seed=seed + b, **sampling)
                images = decode_images(model, codes, **decode)
                for group in _same_size(items):
                    ref = torch.stack([items[i]["image"] for i in group]).to(dev)
                    gen = torch.stack([images[i] for i in group]).to(dev).float()
                    for c in consumers:
                        c.update_generated(ref, gen, [captions[i] for i in group])
                prog.update(task, advance=len(items))
    finally:
        model.train(was_training)
    return ""


def _same_size(items: Sequence[dict]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(it["image"].shape), []).append(i)
    return list(groups.values())
