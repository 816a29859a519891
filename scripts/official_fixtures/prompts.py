"""The official ILLUME+ prompt strings, as its own code writes them: tests/fixtures/official/prompts.json.

Usage: python scripts/official_fixtures/prompts.py OFFICIAL_REPO [OUT.json]

OFFICIAL_REPO is a checkout of illume-unified-mllm/ILLUME_plus (its ILLUME/ and vision_tokenizer/
folders); nothing of it is copied into this project. What the script runs of it:

- ``illume.conversation`` (imported as it is): the ``qwen2`` conversation template;
- ``illume.data.data_utils`` (imported as it is): ``ROLE_TEMPLATES``, the training-time templates;
- ``generation_eval/models/illume.py`` (imported, with its model-building imports stubbed in
  ``sys.modules``: ``illume.model.builder``, ``utils.registry_utils``, ``tokenizer.builder`` need the
  released weights, deepspeed and the vision tokenizer's model code, none of which builds a prompt;
  ``tokenizer.dualvitok_model`` is stubbed with its ``RESOLUTION_MAPPING`` read from the file's source
  by ``ast``): the ``ILLUME`` class's default generation/editing templates, and its
  ``inference_mllm``, run up to the point where it tokenizes, to record the exact conditional and
  unconditional prompt strings it feeds the tokenizer (chat turns, the size tag before the source image
  and after the assistant prefix) for a few captions, instructions and sizes;
- ``app_hf.py``: its f-string prompts are read from the source with ``ast`` (the demo cannot be
  imported without gradio and the released model).

The JSON records the official commit (``git rev-parse HEAD`` of OFFICIAL_REPO when it is a git checkout,
else the commit given by --commit).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import types
from pathlib import Path

CAPTIONS = ["a red circle at the top left", "A cat wearing a hat."]
INSTRUCTIONS = ["make the circle blue", "Remove the square"]
SIZES = [(256, 256), (512, 384)]
QUESTIONS = ["what colour is the circle?", "Describe the image."]


class _Stop(Exception):
    pass


def _resolution_mapping(path: Path) -> dict:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RESOLUTION_MAPPING" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"no RESOLUTION_MAPPING in {path}")


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod


def _import_official(root: Path):
    sys.path[:0] = [str(root / "ILLUME"), str(root / "vision_tokenizer")]

    def unavailable(*a, **k):
        raise RuntimeError("stubbed: not needed to build a prompt")

    _stub("illume.model.builder", load_pretrained_model=unavailable)
    _stub("utils", __path__=[])
    _stub("utils.registry_utils", read_config=unavailable)
    _stub("tokenizer", __path__=[])
    _stub("tokenizer.builder", build_vq_model=unavailable)
    mapping = _resolution_mapping(root / "vision_tokenizer" / "tokenizer" / "dualvitok_model.py")
    _stub("tokenizer.dualvitok_model", RESOLUTION_MAPPING=mapping)
    import generation_eval.models.illume as official
    import illume.conversation as conversation
    import illume.data.data_utils as data_utils

    return conversation, data_utils, official


def _app_prompts(path: Path) -> dict[str, str]:
    """The f-strings of app_hf.py's generation/editing prompts, as templates with {name} fields."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.JoinedStr):
            name = getattr(node.targets[0], "id", None)
            if name in ("text", "unconditional_text"):
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                    for v in node.value.values
                )
                out.setdefault(name, []).append(text)
    return out


class _Recorder:
    """Stands in for the tokenizer: ``tokenizer_image_token`` records each prompt string it is given."""

    def __init__(self, official):
        import torch

        self.prompts: list[str] = []
        self.torch = torch
        official.tokenizer_image_token = self.tokenize

    def tokenize(self, prompt, tokenizer, image_token_index=None, return_tensors=None):
        self.prompts.append(prompt)
        return self.torch.tensor([1, 2, 3])


def _engine(official, conv_version: str, image_size: tuple[int, int] | None):
    """An ``ILLUME`` object with only what ``inference_mllm`` reads before generating."""
    import torch

    eng = official.ILLUME.__new__(official.ILLUME)
    cfg = types.SimpleNamespace(model_args=types.SimpleNamespace(version=conv_version))
    eng.config = cfg
    eng.device = "cpu"
    eng.seed = 0
    eng.tokenizer = types.SimpleNamespace(padding_side="left", pad_token_id=0, eos_token_id=0)
    eng.image_processor = None
    eng.mllm_model = types.SimpleNamespace(config=None)
    # anchors: process_images returns (W, H) sizes; the pixels do not matter to the prompt
    if image_size is not None:
        h, w = image_size
        official.process_images = lambda images, *a, **k: (torch.zeros(len(images), 3, h, w), [(w, h)] * len(images))

    def stop(*a, **k):
        raise _Stop

    eng.prepare_interleaved_logit_processor = stop
    # the templates, as the class's __init__ sets them (its other work loads the released model)
    src = Path(official.__file__).read_text()
    for node in ast.walk(ast.parse(src)):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Attribute)
            and node.targets[0].attr.startswith("_default_")
            and isinstance(node.value, ast.Constant)
        ):
            setattr(eng, node.targets[0].attr, node.value.value)
    return eng


def _run(official, eng, batch, config, is_gen: bool) -> list[str]:
    rec = _Recorder(official)
    try:
        eng.inference_mllm(batch, config, is_img_gen_task=is_gen)
    except _Stop:
        pass
    return rec.prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("official", type=Path, help="checkout of illume-unified-mllm/ILLUME_plus")
    ap.add_argument("out", type=Path, nargs="?", default=Path("tests/fixtures/official/prompts.json"))
    ap.add_argument("--commit", help="the official commit, when OFFICIAL is not a git checkout")
    args = ap.parse_args()
    root = args.official.resolve()
    commit = args.commit
    if commit is None:
        got = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        if got.returncode != 0:
            raise SystemExit(f"{root} is not a git checkout: give its commit with --commit")
        commit = got.stdout.strip()
    conversation, data_utils, official = _import_official(root)
    from PIL import Image

    conv = conversation.conv_templates["qwen2"]
    out: dict = {
        "official_commit": commit,
        "made_by": "scripts/official_fixtures/prompts.py",
        "conversation_qwen2": {"system": conv.system, "roles": list(conv.roles), "sep": conv.sep},
        "role_templates": data_utils.ROLE_TEMPLATES,
        "app_hf": _app_prompts(root / "ILLUME" / "app_hf.py"),
        "understanding": [],
        "generation": [],
        "editing": [],
    }
    eng = _engine(official, "qwen2", None)
    out["default_templates"] = {k: getattr(eng, k) for k in sorted(vars(eng)) if k.startswith("_default_")}
    # understanding: the notebook's call, inference_mllm(..., is_img_gen_task=False)
    for q in QUESTIONS:
        h, w = SIZES[0]
        eng = _engine(official, "qwen2", (h, w))
        cfg = eng.prepare_inference_config(resolution=None)
        (prompt,) = _run(official, eng, [dict(prompt=q, images_data=[Image.new("RGB", (w, h))])], cfg, False)
        out["understanding"].append({"question": q, "prompt": prompt})
    # generation: the notebook's default templates, with the size tag and the unconditional prompt
    for caption in CAPTIONS:
        for h, w in SIZES:
            eng = _engine(official, "qwen2", None)
            tag = eng.get_resolution_tag_from_resolution((h, w))
            prompt = eng.default_generation_template.format(resolution_tag=tag, content=caption)
            uncond = eng.default_generation_unconditional_template.format(resolution_tag=tag)
            cfg = eng.prepare_inference_config(resolution=(h, w), unconditional_prompt=uncond)
            cond_p, uncond_p = _run(official, eng, [dict(prompt=prompt)], cfg, True)
            out["generation"].append({"caption": caption, "size": [h, w], "prompt": cond_p, "uncond": uncond_p})
    # editing: the notebook's templates with resolution_tag='' (the code inserts the source size's tag)
    for instruction in INSTRUCTIONS:
        for h, w in SIZES:
            eng = _engine(official, "qwen2", (h, w))
            prompt = eng.default_editing_template.format(resolution_tag="", content=instruction)
            uncond = eng.default_editing_unconditional_template.format(resolution_tag="")
            cfg = eng.prepare_inference_config(unconditional_prompt=uncond)
            cfg.resolution = None  # the source image's size decides, as for the notebook's edit
            image = Image.new("RGB", (w, h))
            cond_p, uncond_p = _run(official, eng, [dict(prompt=prompt, images_data=[image])], cfg, True)
            out["editing"].append({"instruction": instruction, "size": [h, w], "prompt": cond_p, "uncond": uncond_p})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
