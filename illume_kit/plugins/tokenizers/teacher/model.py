"""SemanticTeacher: an open_clip image-text model trained with the SigLIP loss, used frozen.

DualViTok's semantic branch and the SigLIP-only baseline need a frozen encoder whose patch features
carry meaning. Here that encoder is trained in-project: ``loss(images, captions)`` is
``open_clip.loss.SigLipLoss`` over the two towers' normalised embeddings; afterwards
``encode_image`` gives the ViT's final (post-LayerNorm) patch tokens as a (B, h, w, C) grid, and
``save``/``load`` move it through a folder (``config.json`` + ``model.safetensors``) so other
components load it from a local path. Image sizes other than the training size are supported by
bicubically resampling the learned position embeddings (the grid follows the image).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import SigLipLoss
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_model, save_model
from torch import nn

from illume_kit.plugins.tokenizers.teacher.params import TeacherParams

FORMAT = "illume-kit-semantic-teacher"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def _open_clip_architecture(p: TeacherParams) -> nn.Module:
    """An open_clip architecture by its shipped config name or a config dict, randomly initialised:
    a timm tower is built with ``pretrained=False`` and an HF text tower is refused (both would download)."""
    if p.open_clip_model:
        cfg = open_clip.get_model_config(p.open_clip_model)
        if cfg is None:
            raise ValueError(
                f"teacher open_clip_model {p.open_clip_model!r} is not an architecture open_clip ships a config for "
                f"(e.g. {', '.join(m for m in open_clip.list_models() if 'SigLIP' in m)[:200]})"
            )
    else:
        cfg = p.open_clip_config
    cfg = copy.deepcopy(dict(cfg))
    custom = cfg.pop("custom_text", False)
    vision, text = dict(cfg.pop("vision_cfg", {})), dict(cfg.pop("text_cfg", {}))
    if text.get("hf_model_name"):
        raise ValueError(
            "teacher open_clip architecture: a Hugging Face text tower (text_cfg.hf_model_name) is not supported"
        )
    vision["timm_model_pretrained"] = False
    for key in ("hf_tokenizer_name", "tokenizer_kwargs"):  # the tokenizer is not part of the model
        text.pop(key, None)
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    allowed = {"embed_dim", "quick_gelu", "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"teacher open_clip architecture: unsupported keys {unknown} (valid: {sorted(allowed)})")
    try:
        return cls(vision_cfg=vision, text_cfg=text, **cfg)
    except (TypeError, RuntimeError) as exc:  # an unknown cfg field or timm model name
        what = p.open_clip_model or "open_clip_config"
        raise ValueError(f"teacher open_clip architecture {what!r} does not build: {exc}") from exc


def _dynamic_size(trunk: nn.Module) -> None:
    """Let a timm ViT take any image size, position embeddings resampled to the grid (timm's own
    ``dynamic_img_size`` path, which the released SigLIP configs leave off)."""
    from timm.layers import Format

    trunk.dynamic_img_size = True
    trunk.patch_embed.strict_img_size = False
    trunk.patch_embed.flatten = False
    trunk.patch_embed.output_fmt = Format.NHWC


def build_clip(p: TeacherParams) -> nn.Module:
    """The open_clip model a ``TeacherParams`` describes: a named or given open_clip architecture, or
    ``open_clip.CLIP`` from the size fields."""
    if p.open_clip_model or p.open_clip_config:
        return _open_clip_architecture(p)
    vision = dict(
        image_size=p.image_size,
        patch_size=p.patch_size,
        width=p.vision_width,
        layers=p.vision_layers,
        head_width=p.vision_head_width,
        mlp_ratio=p.mlp_ratio,
        pool_type=p.vision_pool,
    )
    text = dict(
        context_length=p.context_length,
        vocab_size=49408,
        width=p.text_width,
        heads=p.text_heads,
        layers=p.text_layers,
        mlp_ratio=p.mlp_ratio,
    )
    return open_clip.CLIP(
        p.embed_dim, vision, text, init_logit_scale=p.init_logit_scale, init_logit_bias=p.init_logit_bias
    )


class SemanticTeacher(nn.Module):
    # the blocks FSDP shards one by one and activation checkpointing recomputes (train.parallel)
    _no_split_modules = ["ResidualAttentionBlock"]
    Params = TeacherParams

    def __init__(self, params: TeacherParams | None = None):
        super().__init__()
        self.params = p = params if params is not None else TeacherParams()
        self.clip = build_clip(p)
        self._trunk = getattr(self.clip.visual, "trunk", None)  # a timm tower (open_clip TimmModel)
        if self._trunk is not None:
            _dynamic_size(self._trunk)
        text = getattr(self.clip, "text", self.clip)  # CustomTextCLIP keeps its text tower apart
        self.tokenizer = SimpleTokenizer(context_length=getattr(text, "context_length", None) or p.context_length)
        self.siglip = SigLipLoss()
        mean, std = p.image_mean or OPENAI_DATASET_MEAN, p.image_std or OPENAI_DATASET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return self._trunk.num_features if self._trunk is not None else self.params.vision_width

    @property
    def patch_size(self) -> int:
        return self._trunk.patch_embed.patch_size[0] if self._trunk is not None else self.params.patch_size

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols); like open_clip's patch conv, pixels past the last whole patch are dropped."""
        s = self.patch_size
        if height < s or width < s:
            raise ValueError(f"semantic teacher: image sides must be at least the patch size {s}, got {height}x{width}")
        return height // s, width // s

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    # ------------------------------------------------------------------ features

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> final patch features (B, H//patch, W//patch, vision_width)."""
        v = self.clip.visual
        gh, gw = self.grid(images.shape[-2], images.shape[-1])
        if self._trunk is not None:  # timm ViT: its final-norm tokens after the prefix (class/register) tokens
            s = self.patch_size
            tokens = self._trunk.forward_features(self._prepare(images)[..., : gh * s, : gw * s])
            return tokens[:, self._trunk.num_prefix_tokens :].reshape(images.shape[0], gh, gw, -1)
        x = v.conv1(self._prepare(images))
        b, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)
        pos = v.positional_embedding
        if (gh, gw) != tuple(v.grid_size):
            g0, g1 = v.grid_size
            grid_pos = pos[1:].reshape(1, g0, g1, c).permute(0, 3, 1, 2)
            grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:1], grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, c)])
        cls = v.class_embedding.to(x.dtype).expand(b, 1, c)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        x = v.ln_post(v.transformer(v.ln_pre(x)))
        return x[:, 1:].reshape(b, gh, gw, c)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        vocab = getattr(self.clip, "vocab_size", None) or getattr(getattr(self.clip, "text", None), "vocab_size", None)
        if vocab is not None and vocab != self.tokenizer.vocab_size:
            raise ValueError(
                f"semantic teacher: its text tower has a {vocab}-token vocabulary, but captions are read with the "
                f"CLIP BPE ({self.tokenizer.vocab_size} tokens); this teacher encodes images only"
            )
        return self.tokenizer(list(captions)).to(self.mean.device)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings (B, embed_dim) at the training resolution."""
        return self.clip.encode_image(self._prepare(images), normalize=True)

    def embed_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Normalised caption embeddings (B, embed_dim)."""
        return self.clip.encode_text(self.tokenize(captions), normalize=True)

    def logits(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """SigLIP pairwise logits (B images, N captions)."""
        scale, bias = self.clip.logit_scale.exp(), self.clip.logit_bias
        return scale * self.embed_image(images) @ self.embed_text(captions).T + bias

    # ------------------------------------------------------------------ training

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.clip.visual.proj
        return F.normalize(pooled @ proj if proj is not None else pooled, dim=-1)

    def embed_regions(
        self, images: torch.Tensor, regions: Sequence[Sequence[Mapping]], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[str]]:
        """Normalised embeddings of boxes (B images, each a list of {box: (x0, y0, x1, y1) in [0, 1], text}):
        the mean of the patch features whose centres fall in the box, through the image projection (as
        ``vision_pool: avg`` pools the whole image). Boxes holding no patch centre are skipped.
        ``features``: this batch's ``encode_image`` output, when the caller already has it."""
        if len(regions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(regions)} region lists")
        feats = self.encode_image(images) if features is None else features  # (B, h, w, C)
        h, w = feats.shape[1:3]
        flat = [(i, r) for i, boxes in enumerate(regions) for r in boxes]
        box = torch.tensor([r["box"] for _, r in flat], dtype=feats.dtype, device=feats.device).reshape(-1, 4)
        ys = (torch.arange(h, device=feats.device, dtype=feats.dtype) + 0.5) / h
        xs = (torch.arange(w, device=feats.device, dtype=feats.dtype) + 0.5) / w
        rows = (ys[None] >= box[:, 1:2]) & (ys[None] < box[:, 3:4])  # (R, h)
        cols = (xs[None] >= box[:, 0:1]) & (xs[None] < box[:, 2:3])  # (R, w)
        inside = (rows[:, :, None] & cols[:, None, :]).to(feats.dtype)  # (R, h, w)
        count = inside.sum((1, 2))
        keep = count > 0
        if not keep.any():
            raise ValueError("no region box holds a patch centre: boxes are (x0, y0, x1, y1) fractions of the image")
        image = torch.tensor([i for i, _ in flat], device=feats.device)[keep]
        weights = inside[keep] / count[keep, None, None]
        pooled = torch.einsum("rhw,rhwc->rc", weights, feats[image])
        texts = [r["text"] for (_, r), k in zip(flat, keep.tolist()) if k]
        return self._project(pooled), texts

    def region_loss(
        self, images: torch.Tensor, regions: Sequence[Sequence[Mapping]], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid loss of every region against every distinct region text of the batch (a pair is
        positive when the texts are equal, so repeated texts like 'nothing' are no false negatives);
        returns (loss, detached accuracy of each region's best-scoring text)."""
        emb, texts = self.embed_regions(images, regions, features)
        vocab = sorted(set(texts))
        txt = self.embed_text(vocab)
        target = torch.tensor([vocab.index(t) for t in texts], device=emb.device)
        labels = 2.0 * F.one_hot(target, len(vocab)).to(emb.dtype) - 1.0
        logits = self.clip.logit_scale.exp() * emb @ txt.T + self.clip.logit_bias
        loss = -F.logsigmoid(labels * logits).sum() / emb.shape[0]
        return loss, (logits.argmax(-1) == target).float().mean().detach()

    def loss(
        self, images: torch.Tensor, captions: Sequence[str], regions: Sequence[Sequence[Mapping]] | None = None
    ) -> dict[str, torch.Tensor]:
        """SigLIP sigmoid loss over the batch, plus detached image->text retrieval accuracy; with
        ``regions`` and ``region_weight > 0``, plus that weight times ``region_loss`` (the image and
        its regions then pool one forward pass of the ViT)."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        local = regions is not None and self.params.region_weight > 0
        if local:
            if self.params.vision_pool != "avg":
                raise ValueError("region_weight needs vision_pool: avg (regions pool patches as the image does)")
            feats = self.encode_image(images)
            img = self._project(feats.mean((1, 2)))
        else:
            img = self.embed_image(images)
        txt = self.embed_text(captions)
        scale, bias = self.clip.logit_scale.exp(), self.clip.logit_bias
        loss = self.siglip(img, txt, scale, bias)
        with torch.no_grad():
            hit = (img @ txt.T).argmax(-1) == torch.arange(len(captions), device=img.device)
        out = {"loss": loss, "retrieval_accuracy": hit.float().mean(), "logit_scale": scale.detach()}
        if local:
            region, acc = self.region_loss(images, regions, feats)
            out.update(
                loss=loss + self.params.region_weight * region,
                image_loss=loss.detach(),
                region_loss=region.detach(),
                region_accuracy=acc,
            )
        return out

    def freeze(self) -> SemanticTeacher:
        """Eval mode, no gradients: how tokenizers use a trained teacher."""
        self.eval()
        self.requires_grad_(False)
        return self

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/config.json`` + ``path/model.safetensors`` (atomically: temp folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            config = {"format": FORMAT, "version": 1, "params": self.params.model_dump(mode="json")}
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            save_model(self.clip, str(tmp / WEIGHTS_FILE))
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", weights: bool = True) -> SemanticTeacher:
        """Rebuild from a folder written by ``save`` (weights via safetensors; no code is run).
        ``weights=False`` builds the architecture only (its config), for a model on the meta device."""
        path = Path(path)
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"semantic teacher: {str(path)!r} needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by SemanticTeacher.save)"
            )
        config = json.loads(cfg_file.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"semantic teacher: {str(cfg_file)!r} is not a {FORMAT} config")
        teacher = cls(TeacherParams(**config["params"]))
        if not weights:
            return teacher
        load_model(teacher.clip, str(path / WEIGHTS_FILE), strict=True, device=str(device))
        return teacher.to(device)
