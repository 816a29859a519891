"""The ``diffusion`` detokenizer: a diffusers UNet that paints pixels from code maps (ILLUME+ §4).

Why diffusion when the tokenizer has a pixel decoder: a semantic-only tokenizer (SigLIP) has none,
and a denoiser conditioned on codes can add detail the codes never stored and upsample 2x on the way
(ILLUME+ decodes 512-pixel token maps to 1024-pixel images). How ILLUME+ conditions it, and so how
this class does:

1. codes -> the tokenizer's own quantised maps (``tokenizer.codes_to_maps``), one per consumed
   codebook; coarser levels are resized bicubically to the finest grid and all are concatenated;
2. that map is upsampled (nearest) to the denoiser's input grid and concatenated to the noisy
   input's channels;
3. the output size enters as an index into ``output_sizes`` (see ``unet.py`` for where it goes);
4. classifier-free guidance against an all-zero code map, learned by zeroing a sample's map with
   probability ``cond_drop_prob`` in training. Guidance 1 skips the unconditional branch, so it is
   exactly the conditional prediction.

The tokenizer is referenced, not owned: it is no submodule, so its weights are neither duplicated in
this state_dict nor trained by ``loss``. The UNet is built in ``attach`` because its input width
depends on the tokenizer's codebooks; ``save_pretrained`` writes native diffusers folders.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from illume_kit.core.protocols import CodeMaps
from illume_kit.plugins.decoders.folder import (
    DiffusersFolderError,
    PipelineFolder,
    check_weights,
    init_kwargs,
    read_json,
    read_pipeline_folder,
)
from illume_kit.plugins.decoders.params import DiffusionDetokenizerParams, check_sampling_scheduler
from illume_kit.plugins.decoders.schedules import TrainingProcess, make_scheduler
from illume_kit.plugins.decoders.spaces import PixelSpace, VAESpace
from illume_kit.plugins.decoders.unet import build_unet, call_unet, size_conditioning_kind, unet_class
from illume_kit.plugins.meta import building_on_meta


def _init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers model config as JSON-ready constructor kwargs (its private ``_*`` keys dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


class DiffusionDetokenizer(nn.Module):
    # the blocks FSDP shards one by one and activation checkpointing recomputes (train.parallel)
    _no_split_modules = ["ResnetBlock2D", "BasicTransformerBlock", "Attention"]
    Params = DiffusionDetokenizerParams

    def __init__(self, params: DiffusionDetokenizerParams | None = None) -> None:
        super().__init__()
        self.params = p = params or DiffusionDetokenizerParams()
        # a pretrained pipeline folder is checked file by file before anything is built; its
        # scheduler becomes the params' scheduler fields, so checkpoints record it
        self._folder: PipelineFolder | None = None
        self._unet_from_folder = False  # the denoiser's architecture is a folder's, not the params'
        if p.pretrained and (Path(p.pretrained) / "unet").is_dir():
            self._folder = read_pipeline_folder(p.pretrained, need_weights=not building_on_meta())
            self.params = p = _with_scheduler_of(p, self._folder)
        if p.space == "pixel":
            self.space: nn.Module = PixelSpace(p.patch_size)
        else:
            vae = p.vae_pretrained
            if vae is None and self._folder is not None and self._folder.vae_config is not None:
                vae = str(self._folder.path / "vae")
            self.space = VAESpace(p.vae_config, vae)
        self.denoiser: nn.Module | None = None  # built by attach(tokenizer)
        self.process = TrainingProcess(p)
        self._names: tuple[str, ...] | None = tuple(p.consumes) if p.consumes else None
        self._strides: dict[str, int] = {}
        object.__setattr__(self, "_tokenizer", None)  # not a submodule

    # ---- contract -------------------------------------------------------------------------------
    @property
    def consumes(self) -> tuple[str, ...]:
        if self._names is None:
            raise RuntimeError(
                "diffusion detokenizer consumes all of the tokenizer's codebooks: attach(tokenizer) first"
            )
        return self._names

    @property
    def output_scale(self) -> int:
        return self.params.output_scale

    def attach(self, tokenizer: Any) -> None:
        """Pick the consumed codebooks, size the UNet input from their code dims, load ``pretrained``."""
        if not isinstance(tokenizer, CodeMaps):
            raise ValueError(
                f"the diffusion detokenizer conditions on quantised code maps, but {type(tokenizer).__name__} "
                "has no codes_to_maps(codes) -> {name: (B, code_dim, h, w)}"
            )
        specs = {cb.name: cb for cb in tokenizer.codebooks}
        names = tuple(self.params.consumes) if self.params.consumes else tuple(specs)
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ValueError(
                f"diffusion detokenizer consumes {unknown}, not codebooks of this tokenizer ({', '.join(specs)})"
            )
        self._names = names
        self._strides = {n: specs[n].stride for n in names}
        self.cond_channels = sum(specs[n].code_dim for n in names)
        object.__setattr__(self, "_tokenizer", tokenizer)
        ch = self.space.channels
        if self.params.pretrained:  # built from the folder's config, never randomly initialised first
            self.denoiser = None
            self._load_unet(Path(self.params.pretrained))
        else:
            self.denoiser = build_unet(self.params, ch + self.cond_channels, ch)

    def checkpoint_params(self, params: dict) -> dict:
        """What a checkpoint's manifest records: the architectures loaded from ``pretrained`` /
        ``vae_pretrained`` written out in place of the folders (their weights are in the checkpoint)."""
        p = self.params
        out = dict(params)
        if self._folder is not None:
            out.update(self._folder.scheduler_params(), scheduler_config=dict(p.scheduler_config))
        if p.vae_pretrained or (self._unet_from_folder and isinstance(self.space, VAESpace)):
            out.update(vae_config=_init_kwargs(self.space.vae.config), vae_pretrained=None)
        if self._unet_from_folder and self.denoiser is not None:
            cfg = _init_kwargs(self.denoiser.config)
            out.update(
                unet_type="unet2d-condition" if hasattr(self.denoiser.config, "cross_attention_dim") else "unet2d",
                unet_config=cfg,
                block_out_channels=list(cfg["block_out_channels"]),
                attention_levels=["Attn" in t for t in cfg["down_block_types"]],
                pretrained=None,
            )
            if isinstance(cfg.get("layers_per_block"), int):
                out["layers_per_block"] = cfg["layers_per_block"]
            if isinstance(cfg.get("norm_num_groups"), int):
                out["norm_num_groups"] = cfg["norm_num_groups"]
        return out

    # ---- conditioning ---------------------------------------------------------------------------
    def _attached(self) -> nn.Module:
        if self.denoiser is None or self._tokenizer is None:
            raise RuntimeError("DiffusionDetokenizer is not attached: call attach(tokenizer) first")
        return self.denoiser

    @torch.no_grad()
    def code_map(self, codes: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Codes -> (concatenated code map at the finest grid, the codes' pixel size (H, W))."""
        self._attached()
        missing = [n for n in self.consumes if n not in codes]
        if missing:
            raise KeyError(
                f"codes lack codebooks {missing} consumed by the diffusion detokenizer (got {sorted(codes)})"
            )
        maps = self._tokenizer.codes_to_maps(codes)
        maps = {n: maps[n] for n in self.consumes}
        # finest level: most cells, then smallest stride; it fixes the grid and the pixel size
        finest = max(self.consumes, key=lambda n: (maps[n].shape[-2] * maps[n].shape[-1], -self._strides[n]))
        grid = tuple(maps[finest].shape[-2:])
        parts = [
            m
            if tuple(m.shape[-2:]) == grid
            else F.interpolate(m.float(), size=grid, mode="bicubic", align_corners=False)
            for m in maps.values()
        ]
        s = self._strides[finest]
        return torch.cat([m.float() for m in parts], dim=1), (grid[0] * s, grid[1] * s)

    def size_index(self, height: int, width: int) -> int | None:
        sizes = self.params.output_sizes
        if not sizes:
            return None
        try:
            return sizes.index([height, width])
        except ValueError:
            raise ValueError(
                f"output size {height}x{width} is not one the diffusion detokenizer knows; output_sizes = "
                f"{sizes} (add it to the detokenizer's output_sizes param and train on it)"
            ) from None

    def _inputs(self, codes: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """Code map at the denoiser grid, size labels, and the output size (H, W)."""
        unet = self._attached()
        cmap, (h, w) = self.code_map(codes)
        out = (h * self.output_scale, w * self.output_scale)
        st = self.space.stride
        if out[0] % st or out[1] % st:
            raise ValueError(f"output size {out[0]}x{out[1]} is not divisible by the denoiser stride {st}")
        ref = next(unet.parameters())
        cmap = F.interpolate(cmap, size=(out[0] // st, out[1] // st), mode="nearest").to(ref.device, ref.dtype)
        idx = self.size_index(*out)
        labels = None if idx is None else torch.full((cmap.shape[0],), idx, dtype=torch.long, device=ref.device)
        return cmap, labels, out

    def _predict(self, x: torch.Tensor, t: Any, cmap: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return call_unet(self.denoiser, torch.cat([x, cmap], dim=1), t, labels)

    def _predict_compiled(self, x: torch.Tensor, t: Any, cmap: torch.Tensor, labels) -> torch.Tensor:
        return call_unet(self._compiled(), torch.cat([x, cmap], dim=1), t, labels)

    def _compiled(self) -> nn.Module:
        """The denoiser through ``torch.compile``, kept beside the module (not a submodule: the state
        dict stays the denoiser's) and rebuilt when the denoiser is replaced (a folder loaded)."""
        kept = self.__dict__.get("_compiled_denoiser")
        if kept is None or kept[0] is not self.denoiser:
            kept = (self.denoiser, torch.compile(self.denoiser))
            self.__dict__["_compiled_denoiser"] = kept
        return kept[1]

    # ---- training -------------------------------------------------------------------------------
    def loss(
        self, images: torch.Tensor, codes: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """images: (B, 3, H, W) in [0, 1] at the output resolution; codes: the same images' codes.

        Epsilon / v / flow-velocity regression, per the scheduler. ``generator`` (CPU) makes the noise,
        timesteps and condition dropout reproducible. The code map is dropped only in train mode.
        """
        cmap, labels, out = self._inputs(codes)
        if tuple(images.shape[-2:]) != out:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but these codes decode to {out} "
                f"(output_scale={self.output_scale}): train on images at the output resolution"
            )
        ref = next(self.denoiser.parameters())
        x0 = self.space.encode(images.to(ref.device, ref.dtype) * 2 - 1, generator=generator)
        if self.training and self.params.cond_drop_prob > 0:
            keep = torch.rand(x0.shape[0], generator=generator) >= self.params.cond_drop_prob
            cmap = cmap * keep.to(cmap.device, cmap.dtype).view(-1, 1, 1, 1)
        xt, t, target = self.process(x0, generator=generator)
        pred = self._predict(xt, t, cmap, labels)
        return {"loss": F.mse_loss(pred.float(), target.float())}

    # ---- sampling -------------------------------------------------------------------------------
    @classmethod
    def check_decode_options(cls, params: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        """ValueError naming a decode option that a decoder with (manifest) ``params`` cannot take, so
        ``eval --decode`` fails before any weights load; ``decode`` checks the same again."""
        steps = options.get("steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"decode option steps={steps!r}: the diffusion detokenizer needs a whole number >= 1")
        if options.get("scheduler") is not None:
            check_sampling_scheduler(str(params.get("scheduler", cls.Params().scheduler)), options["scheduler"])

    @torch.no_grad()
    def decode(
        self,
        codes: Mapping[str, torch.Tensor],
        steps: int | None = None,
        guidance: float | None = None,
        guidance_rescale: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        scheduler: str | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """Codes -> images (B, 3, H, W) in [0, 1] at ``output_scale`` x the codes' pixel size.

        steps / guidance / guidance_rescale / scheduler default to the params; ``seed`` (or a CPU
        ``generator``) makes the sample reproducible exactly. ``scheduler`` samples with another
        scheduler of the training one's family (``params.sampling_schedulers``: any of ddpm, ddim,
        euler, dpm-solver++, unipc for a decoder trained with one of them), built from the trained
        noise schedule, so one checkpoint compares samplers and step counts. ``compile`` runs the
        denoiser through ``torch.compile`` (compiled once per decoder, on the first such call).
        """
        x = self.denoise(codes, steps, guidance, guidance_rescale, seed, generator, scheduler, compile)
        return ((self.space.decode(x).float() + 1) / 2).clamp(0.0, 1.0)

    @torch.no_grad()
    def denoise(
        self,
        codes: Mapping[str, torch.Tensor],
        steps: int | None = None,
        guidance: float | None = None,
        guidance_rescale: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        scheduler: str | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """The sampling loop of ``decode``: the final sample in the denoiser's space (a VAE latent,
        scaled as the UNet sees it, or pixel-unshuffled pixels), before ``space.decode``.

        The initial noise is one ``randn_tensor`` draw from ``generator`` of the sample's shape, times
        the scheduler's ``init_noise_sigma``, as diffusers' SDXL pipelines (and ILLUME+'s) draw it.
        """
        p = self.params
        steps = p.num_inference_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"decode option steps={steps}: the diffusion detokenizer needs at least 1 step")
        sched = make_scheduler(p, pixel_space=p.space == "pixel", name=scheduler)
        guidance = p.guidance_scale if guidance is None else float(guidance)
        rescale = p.guidance_rescale if guidance_rescale is None else float(guidance_rescale)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        cmap, labels, (h, w) = self._inputs(codes)
        b, st = cmap.shape[0], self.space.stride
        sched.set_timesteps(steps, device=cmap.device)
        shape = (b, self.space.channels, h // st, w // st)
        x = randn_tensor(shape, generator=generator, device=cmap.device, dtype=cmap.dtype)
        x = x * getattr(sched, "init_noise_sigma", 1.0)  # flow matching starts at unit noise
        # stochastic steps (ddpm) draw from the generator; deterministic solvers like UniPC take none
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
        predict = self._predict_compiled if compile else self._predict
        cfg = guidance != 1.0
        if cfg:  # conditional and unconditional rows in one batched forward
            cmap = torch.cat([cmap, torch.zeros_like(cmap)])
            labels = None if labels is None else torch.cat([labels, labels])
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            pred = predict(torch.cat([xin, xin]) if cfg else xin, t, cmap, labels)
            if cfg:
                cond, uncond = pred.chunk(2)
                pred = uncond + guidance * (cond - uncond)
                if rescale > 0:
                    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

                    pred = rescale_noise_cfg(pred, cond, guidance_rescale=rescale)
            x = sched.step(pred, t, x, **step_kwargs).prev_sample
        return x

    # ---- ILLUME+'s released SDXL decoder -----------------------------------------------------------
    @classmethod
    def official_params(cls, folder: str | Path) -> dict[str, Any]:
        """Params for ILLUME+'s released SDXL decoder folder (see ``official.official_sdxl_params``):
        the ``official`` preset reading UNet, VAE and scheduler from ``folder`` at attach."""
        from illume_kit.plugins.decoders.official import official_sdxl_params

        return official_sdxl_params(folder)

    def load_official(self, folder: str | Path) -> None:
        """Load the released SDXL decoder folder (must be attached). A detokenizer built from
        ``official_params(folder)`` has read it already at attach, and is left as it is."""
        loaded = self._folder.path.resolve() if self._folder is not None else None
        if loaded != Path(folder).resolve() or not self._unet_from_folder:
            self.load_pretrained(folder)

    # ---- native diffusers folders ---------------------------------------------------------------
    def save_extra(self, folder) -> None:
        """Checkpoint hook: also write the denoiser as a native diffusers folder (``<folder>/diffusers``)."""
        from pathlib import Path

        self.save_pretrained(Path(folder) / "diffusers")

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``unet/`` (+ ``vae/``) as diffusers model folders and ``scheduler/``, like a pipeline."""
        folder = Path(folder)
        self._attached().save_pretrained(folder / "unet", safe_serialization=True)
        if isinstance(self.space, VAESpace):
            self.space.vae.save_pretrained(folder / "vae", safe_serialization=True)
        make_scheduler(self.params, pixel_space=self.params.space == "pixel").save_pretrained(folder / "scheduler")
        return folder

    def load_pretrained(self, folder: str | Path) -> None:
        """Load a diffusers pipeline folder completely (``unet/``; ``vae/`` unless ``vae_pretrained`` names
        another; ``scheduler/`` into the params) or a bare diffusers UNet folder. Must be attached."""
        self._attached()
        folder = Path(folder)
        if (folder / "unet").is_dir():
            info = read_pipeline_folder(folder, need_weights=not building_on_meta())
            self._folder = info
            self.params = _with_scheduler_of(self.params, info)
            if info.vae_config is not None and isinstance(self.space, VAESpace) and not self.params.vae_pretrained:
                self.space.load(folder / "vae")
        self._load_unet(folder)

    def _load_unet(self, folder: Path) -> None:
        """The denoiser from ``folder/unet`` (a pipeline folder) or ``folder`` (a bare UNet folder)."""
        unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
        if not unet_dir.is_dir():
            raise DiffusersFolderError(f"{folder}: not a folder (expected a diffusers pipeline folder or UNet folder)")
        if not (unet_dir / "config.json").exists():
            raise DiffusersFolderError(f"{folder} is not a diffusers folder: no config.json in it or in its unet/")
        config = read_json(unet_dir / "config.json", "the UNet's diffusers config")
        meta = building_on_meta()
        if not meta:
            check_weights(unet_dir)
        try:
            cls = unet_class(config.get("_class_name", "UNet2DModel"))
        except ValueError as exc:
            raise DiffusersFolderError(f"{unet_dir / 'config.json'}: {exc}") from None
        want_in = self.space.channels + self.cond_channels
        have = (config.get("in_channels"), config.get("out_channels"))
        if have != (want_in, self.space.channels):
            raise DiffusersFolderError(
                f"{unet_dir}: UNet has in/out channels {have[0]}/{have[1]}, but this tokenizer and space need "
                f"{want_in}/{self.space.channels} ({self.space.channels} + {self.cond_channels} code-map channels)"
            )
        ref = next(self.parameters(), None)
        dtype = ref.dtype if ref is not None else torch.float32
        try:
            if meta:  # compose --meta: the folder's architecture, no weights read
                unet = cls.from_config(init_kwargs(config))
            else:
                unet = cls.from_pretrained(
                    str(unet_dir), local_files_only=True, use_safetensors=True, torch_dtype=dtype
                )
        except (OSError, ValueError) as exc:
            raise DiffusersFolderError(f"{unet_dir}: {str(exc).strip().splitlines()[0]}") from None
        kind, n = size_conditioning_kind(unet), len(self.params.output_sizes)
        if kind == "class" and unet.config.num_class_embeds != n:
            raise DiffusersFolderError(
                f"{unet_dir}: UNet knows {unet.config.num_class_embeds} output sizes, output_sizes lists {n}"
            )
        self.denoiser = unet if ref is None else unet.to(ref.device)  # loaded in ref.dtype
        self._unet_from_folder = True


def _with_scheduler_of(p: DiffusionDetokenizerParams, folder: PipelineFolder) -> DiffusionDetokenizerParams:
    """``p`` with the folder's scheduler class and config (the recipe's ``scheduler_config`` keys on top)."""
    update = folder.scheduler_params()
    if not update:
        return p
    update["scheduler_config"] = {**update["scheduler_config"], **p.scheduler_config}
    try:
        return type(p).model_validate({**p.model_dump(), **update})
    except ValueError as exc:
        raise DiffusersFolderError(f"{folder.path / 'scheduler' / 'scheduler_config.json'}: {exc}") from None
