"""Token ids of a few samples, prompts and sampler outputs of the shipped checkpoint in the plain prompt style.

Writes tests/fixtures/plain_prompt_ids.json, which tests/model/test_prompts.py compares against: the plain
style must keep every id a checkpoint was trained with. Run: python scripts/plain_prompt_ids.py OUT.json
"""

import json
import sys

import torch

from illume_kit.model import tasks
from illume_kit.model.sampler import answer, edit_images, generate_images, image_template, sequence_length
from illume_kit.model.sequence import assemble

CHECKPOINT = "checkpoints/dualvitok_qwen2_mllm_tiny"


def capture(model) -> dict:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 64, 64, generator=g)
    tgt = torch.rand(3, 64, 64, generator=g)
    samples = {
        "und": tasks.und_sample(img, "what colour is the circle?", "red"),
        "und_turns": tasks.und_sample(img, "how many shapes?", "two", more=[("where is the square?", "top left")]),
        "t2i": tasks.t2i_sample(img, "a red circle at the top left"),
        "t2i_uncond": tasks.t2i_sample(img, None),
        "edit": tasks.edit_sample(img, "make the circle blue", tgt),
        "edit_uncond": tasks.edit_sample(img, None, img),
        "edit_instruction_first": tasks.edit_sample(img, "remove the square", tgt, order="instruction_first"),
    }
    out: dict = {}
    for k, s in samples.items():
        b = assemble(model, [s])
        out[k] = {"input_ids": b.input_ids[0].tolist(), "labels": b.labels[0].tolist()}
    prompts = {
        "und_prompt": tasks.und_prompt(img, "what colour is the circle?"),
        "t2i_prompt": tasks.t2i_prompt("a red circle", (64, 64)),
        "edit_prompt": tasks.edit_prompt(img, "make the circle blue"),
    }
    for k, p in prompts.items():
        out[k] = {"sequence_length": sequence_length(model, p, 7)}
    out["eos"] = int(model.backbone.text_tokenizer.eos_token_id)
    out["template"] = image_template(model, (64, 64), out["eos"])
    out["answer"] = answer(model, [img], ["what colour is the circle?"], max_new_tokens=8)
    out["generate"] = {k: v.tolist() for k, v in generate_images(model, ["a red circle"], (64, 64), seed=1)[0].items()}
    out["edit_codes"] = {k: v.tolist() for k, v in edit_images(model, [img], ["make it blue"], seed=2)[0].items()}
    return out


if __name__ == "__main__":
    from illume_kit.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(CHECKPOINT)
    with open(sys.argv[1], "w") as f:
        json.dump(capture(model), f)
