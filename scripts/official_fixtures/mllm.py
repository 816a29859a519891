"""The official ILLUME+ MLLM, small and random, and what its own code outputs: tests/fixtures/official/mllm/.

Usage (in the official code's environment: transformers 4.44.2, see docs/parity.md):
    python scripts/official_fixtures/mllm.py OFFICIAL_REPO [--out DIR] [--commit SHA]

OFFICIAL_REPO is a checkout of illume-unified-mllm/ILLUME_plus; nothing of it is copied into this
project. What the script runs of it, as it is:

- ``ILLUME/scripts/prepare_llm_with_extended_vision_tokenizer.py::extend_qwen2_5`` extends a tiny
  Qwen2 folder (a byte-level BPE of a few hundred tokens + the Qwen2.5 chat tokens, and more
  embedding rows than tokens, as Qwen2.5 has) with the image vocabulary of a 64 + 192 code
  DualViTok, exactly as the release's 3B model was made;
- ``IllumeQwen2ForCausalLM`` (``illume_qwen2``) with its ``DualVisionTower`` input encoder (a
  shrunken DualViTok: ``official_env.TINY_DUALVITOK`` with all pixel CNN widths 32) and the
  ``MixedProjector``, written with ``save_pretrained`` as the release's MLLM folder;
- its forward on an understanding prompt with an image (``tokenizer_image_token``, the qwen2
  conversation template): the text logits;
- ``generate`` with the official ``InterleavedLogitsProcessor`` for text-to-image (greedy, and seeded
  sampling with CFG at the demo's settings) at a square and a non-square anchor, and an edit, the
  prompts, grids and token budget (``calculate_image_token_num`` of ``generation_eval/models/illume.py``,
  through ``RESOLUTION_MAPPING``) as that file's ``inference_mllm`` makes them. That file's
  module-level Qwen2.5 ids are the only thing replaced: the processor gets this model's ids.

Weights are drawn at random, rounded to bfloat16 (stored so, the fixture stays small; every
computation runs in fp32) and crafted in one way: a random LM almost never emits
``<start_of_image>`` by itself, which the official processor waits for, so hidden dimension 0
carries a constant: every embedding row has the value 4 there, no attention or MLP output writes it
(those rows of ``o_proj`` and ``down_proj`` are zero), and the ``<start_of_image>`` row has 12. With
tied embeddings that row's logit is 12 x (normed constant) above the uniform offset of the others, so
after the size tag the model opens the image itself and then samples real random codes.

The released MLLM fine-tunes its own input encoder; the output codes come from the frozen DualViTok.
So the fixture has two DualViTok weight sets: ``dualvitok.safetensors`` (output tokenizer) and the
MLLM's ``model.vision_tower.*`` (input encoder, drawn separately).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import official_env  # noqa: E402

# every pixel CNN level at width 32 (the release's GroupNorm needs multiples of 32): small weights
VQ = copy.deepcopy(official_env.TINY_DUALVITOK)
for _k in ("pixel_encoder", "pixel_decoder"):
    VQ["config"][_k]["ch_mult"] = [1, 1, 1, 1, 1]
CODEBOOKS = [VQ["config"]["semantic_quantizer"]["codebook_size"], VQ["config"]["pixel_quantizer"]["codebook_size"]]
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
EXTRA_ROWS = 21  # embedding rows past the tokenizer, like Qwen2.5's 151,936 rows for 151,665 tokens
SEED = 1234
TEXT = [
    "a red circle at the top left",
    "A cat wearing a hat.",
    "make the circle blue",
    "Remove the square",
    "what colour is the circle?",
    "Describe the image.",
    "Generate an image of , the content of image is",
    "Generate a random image of",
    "Please edit the image according to the instruction:",
    "Reconstruct the image according to the given image",
    "You are a helpful assistant.",
    "system user assistant",
]
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GENERATION = [  # (caption, (h, w))
    ("a red circle at the top left", (256, 256)),
    # inference_mllm sizes generation through RESOLUTION_MAPPING: its 12 entries are the sizes it serves
    ("A cat wearing a hat.", (384, 512)),
]
EDIT = ("make the circle blue", (256, 256))
QUESTION = "what colour is the circle?"
SAMPLING = {  # ILLUME/app_hf.py
    "generation": {"temperature": 1.0, "top_k": 2048, "top_p": 1.0, "cfg": 2.0},
    "editing": {"temperature": 0.7, "top_k": 512, "top_p": 0.8, "cfg": 1.5},
}


def _bf16(state: dict) -> dict:
    import torch

    return {k: v.to(torch.bfloat16).to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}


def make_text_tokenizer(folder: Path, vocab_size: int):
    """A byte-level BPE with the Qwen2.5 chat tokens, saved as a Qwen2 fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(CHAT_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,  # as Qwen2.5's tokenizer_config.json
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.save_pretrained(folder)
    return fast


def build(work: Path):
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    base, ext = work / "base", work / "extended"
    tok = make_text_tokenizer(base, 320)
    config = Qwen2Config(
        vocab_size=len(tok) + EXTRA_ROWS,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    Qwen2ForCausalLM(config).save_pretrained(base)

    from scripts.prepare_llm_with_extended_vision_tokenizer import extend_qwen2_5

    extend_qwen2_5(str(base), str(ext), CODEBOOKS)
    tok = AutoTokenizer.from_pretrained(str(ext), padding_side="left", use_fast=True)
    return tok, ext, len(AutoTokenizer.from_pretrained(str(base)))


def special_ids(tok, levels: int = 2) -> list[int]:
    names = ["<start_of_image>", "<end_of_image>", "<end_of_line>"]
    for i in range(levels):
        names += [f"<start_of_level{i}>", f"<end_of_level{i}>"]
    return tok.convert_tokens_to_ids(names)


def build_mllm(tok, ext: Path, work: Path):
    import illume.model.multimodal_encoder.dual_encoder  # noqa: F401  (registers DualVisionTower)
    import illume.model.multimodal_projector.builder  # noqa: F401  (registers MixedProjector)
    import torch
    from illume.model.language_model.illume_qwen2 import ILLUMEQwen2Config, IllumeQwen2ForCausalLM
    from safetensors.torch import load_file

    vq_file = work / "dualvitok_tiny.py"
    vq_file.write_text(f"vq_model = {VQ!r}\n")
    cfg = json.loads((ext / "config.json").read_text())
    cfg.update(
        model_type="illume_qwen2",
        architectures=["IllumeQwen2ForCausalLM"],
        mm_vision_tower={
            "type": "DualVisionTower",
            "vq_config": str(vq_file),
            "vq_ckpt": None,
            "min_pixels": 32 * 32,
            "max_pixels": 768 * 768,
            "use_ema": False,
            "trainable": False,
        },
        mm_projector={
            "type": "MixedProjector",
            "projector_cfg1": {"type": "MLPProjector", "mlp_depth": 2},
            "projector_cfg2": {"type": "MLPProjector", "mlp_depth": 2},
            "trainable": True,
        },
        mm_hidden_size=[official_env.TINY_VIT["hidden_size"], VQ["config"]["pixel_encoder"]["z_channels"]],
        special_tokens_ids=special_ids(tok),
        image_aspect_ratio="anyres_dualvitok",
        mm_patch_merge_type="flat",
        torch_dtype="float32",
    )
    for k in ("_name_or_path", "transformers_version"):
        cfg.pop(k, None)
    config = ILLUMEQwen2Config(**cfg)
    torch.manual_seed(SEED + 1)
    model = IllumeQwen2ForCausalLM(config)
    model.get_model().vision_tower.load_model()
    llm = {k: v.float() for k, v in load_file(str(ext / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(llm, strict=False)
    assert not unexpected, unexpected
    assert all(".vision_tower." in k or ".mm_projector." in k or k == "lm_head.weight" for k in missing), missing
    state = _bf16(model.state_dict())
    soi = tok.convert_tokens_to_ids("<start_of_image>")
    with torch.no_grad():
        emb = state["model.embed_tokens.weight"]
        emb[:, 0] = 4.0
        emb[soi, 0] = 12.0
        for i in range(LAYERS):
            state[f"model.layers.{i}.self_attn.o_proj.weight"][0] = 0
            state[f"model.layers.{i}.mlp.down_proj.weight"][0] = 0
        state["model.norm.weight"][0] = 1.0
        if "lm_head.weight" in state:
            state["lm_head.weight"] = emb
    model.load_state_dict(state)
    model.tie_weights()
    return model.eval()


def conversation(question: str) -> str:
    from illume.conversation import conv_templates

    conv = conv_templates["qwen2"].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def ids_of(prompt: str, tok):
    from illume.constants import IMAGE_TOKEN_INDEX
    from illume.mm_utils import tokenizer_image_token

    return tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)


def run_generation(model, tok, cond: str, uncond: str, size, settings, greedy: bool, image=None, seed=SEED):
    """inference_mllm's steps for one prompt: size tags, uncond prompt, the processor, generate."""
    import torch
    from generation_eval.models.illume import calculate_image_token_num
    from generation_eval.models.inference_utils import InterleavedLogitsProcessor
    from transformers import LogitsProcessorList, set_seed

    h, w = size
    _, max_new, h1, w1, h2, w2 = calculate_image_token_num(h, w)
    tag = f"<height_{h}><width_{w}>"
    cond_prompt = conversation(cond.format(resolution_tag=tag)) + tag
    uncond_prompt = conversation(uncond.format(resolution_tag=tag)) + tag
    input_ids, uncond_ids = ids_of(cond_prompt, tok), ids_of(uncond_prompt, tok)
    names = ["start_of_image", "end_of_image", "end_of_line", "start_of_level0", "end_of_level0"]
    names += ["start_of_level1", "end_of_level1"]
    specials = dict(zip(names, special_ids(tok)))
    specials["end_of_text"] = tok.convert_tokens_to_ids("<|im_end|>")
    start = tok.convert_tokens_to_ids("<|image_level0_0|>")
    level0 = (start, start + CODEBOOKS[0])
    level1 = (level0[1], level0[1] + CODEBOOKS[1])
    assert tok.convert_tokens_to_ids("<|image_level1_0|>") == level1[0]
    images = [image] if image is not None else None
    image_sizes = [tuple(image.shape[-2:])[::-1]] if image is not None else None
    s = settings
    processor = InterleavedLogitsProcessor(
        guidance_scale=s["cfg"],
        uncond=uncond_ids,
        model=model,
        level0_range=level0,
        level1_range=level1,
        num_level0_rows=h1,
        num_level0_tokens=w1,
        num_level1_rows=h2,
        num_level1_tokens=w2,
        special_tokens=specials,
        default_temp=s["temperature"],
        level0_temp=s["temperature"],
        level1_temp=s["temperature"],
        default_top_k=s["top_k"],
        level0_top_k=s["top_k"],
        level1_top_k=s["top_k"] * 3,
        default_top_p=s["top_p"],
        level0_top_p=s["top_p"],
        level1_top_p=s["top_p"],
        images=images,
        image_sizes=image_sizes,
    )
    set_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids).ne(0),
            images=images,
            image_sizes=image_sizes,
            pad_token_id=tok.pad_token_id,
            temperature=s["temperature"],
            top_k=s["top_k"],
            top_p=s["top_p"],
            max_new_tokens=max_new,
            logits_processor=LogitsProcessorList([processor]),
            use_cache=True,
            do_sample=not greedy,
        )
    return {
        "prompt": cond_prompt,
        "uncond_prompt": uncond_prompt,
        "prompt_ids": input_ids[0].tolist(),
        "uncond_ids": uncond_ids[0].tolist(),
        "size": [h, w],
        "grids": [[h1, w1], [h2, w2]],
        "settings": dict(s),
        "greedy": greedy,
        "seed": seed,
        "output_ids": out[0].tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/fixtures/official/mllm")
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()
    repo = official_env.setup(args.repo)
    commit = official_env.official_commit(repo, args.commit)
    sys.path.insert(0, str(repo / "ILLUME"))

    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok, ext, text_tokens = build(work)
        model = build_mllm(tok, ext, work)
        mllm_dir = out / "mllm"
        # the config names the DualViTok config file as the release does, by a repository path
        model.config.mm_vision_tower = {**model.config.mm_vision_tower, "vq_config": "dualvitok_tiny.py"}
        model.save_pretrained(str(mllm_dir), safe_serialization=True)
        tok.save_pretrained(str(mllm_dir))
        # the release inherits Qwen2.5-Instruct's generation config
        GenerationConfig(
            bos_token_id=model.config.bos_token_id,
            eos_token_id=model.config.eos_token_id,
            pad_token_id=tok.pad_token_id,
            repetition_penalty=1.05,
        ).save_pretrained(str(mllm_dir))
        model.generation_config = GenerationConfig.from_pretrained(str(mllm_dir))
        _shrink_to_bf16(mllm_dir)

        # the frozen output tokenizer, drawn apart from the MLLM's own input encoder
        torch.manual_seed(SEED + 2)
        vq = official_env.build_dualvitok(VQ)
        vq.load_state_dict(_bf16(vq.state_dict()))
        save_file(
            {k: v.to(torch.bfloat16).contiguous() for k, v in vq.state_dict().items()},
            str(out / "dualvitok.safetensors"),
        )

        # random 8-bit images, as the official processor scales them to [-1, 1]
        g = torch.Generator().manual_seed(SEED + 3)
        pixels = {
            "square": torch.randint(0, 256, (1, 3, 256, 256), generator=g, dtype=torch.uint8),
            "wide": torch.randint(0, 256, (1, 3, 192, 256), generator=g, dtype=torch.uint8),
        }
        images = {k: v.float() / 127.5 - 1 for k, v in pixels.items()}
        # understanding: logits of the last positions (question, turn end, assistant prefix)
        understanding = []
        for name, image in images.items():
            prompt = conversation(f"<image>\n{QUESTION}")
            ids = ids_of(prompt, tok)
            with torch.no_grad():
                logits = model(ids, images=[image], image_sizes=[tuple(image.shape[-2:])[::-1]]).logits[0]
            tail = 16
            understanding.append({"image": name, "prompt": prompt, "prompt_ids": ids[0].tolist(), "tail": tail})
            save_file({"logits": logits[-tail:].contiguous()}, str(out / f"understanding_{name}.safetensors"))
        save_file({k: v.contiguous() for k, v in pixels.items()}, str(out / "images.safetensors"))

        runs = []
        gen_t = "Generate an image of {resolution_tag}, the content of image is " + "{caption}\n"
        uncond_t = "Generate a random image of {resolution_tag}\n"
        for caption, size in GENERATION:
            cond = gen_t.replace("{caption}", caption)
            for greedy in (True, False):
                run = run_generation(model, tok, cond, uncond_t, size, SAMPLING["generation"], greedy)
                runs.append({"task": "generation", "caption": caption, **run})
        instruction, size = EDIT
        edit_t = "{resolution_tag}<image>\nPlease edit the image according to the instruction: " + instruction + "\n"
        edit_u = "{resolution_tag}<image>\nReconstruct the image according to the given image\n"
        for greedy in (True, False):
            run = run_generation(model, tok, edit_t, edit_u, size, SAMPLING["editing"], greedy, image=images["square"])
            runs.append({"task": "editing", "instruction": instruction, "image": "square", **run})

    meta = {
        "official_commit": commit,
        "made_by": "scripts/official_fixtures/mllm.py",
        "text_tokens": text_tokens,
        "codebooks": CODEBOOKS,
        "dualvitok_config": VQ,
        "vit_config": official_env.TINY_VIT,
        "understanding": understanding,
        "generation": runs,
    }
    (out / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")
    # what `illume-kit convert illume-plus-official --dualvitok-params` reads for this shrunken DualViTok
    params = official_env.illume_kit_params(VQ, official_env.TINY_VIT)
    (out / "dualvitok_params.json").write_text(json.dumps(params, indent=1) + "\n")
    for r in runs:
        n = len(r["output_ids"])
        print(f"{r['task']:10s} {r['size']} greedy={r['greedy']}: {n} tokens, first {r['output_ids'][:6]}")


def _shrink_to_bf16(folder: Path) -> None:
    """The MLLM weights are bf16-exact: store them as bf16 (half the bytes, same values)."""
    import torch
    from safetensors.torch import load_file, save_file

    for f in folder.glob("*.safetensors"):
        state = load_file(str(f))
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(f), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
