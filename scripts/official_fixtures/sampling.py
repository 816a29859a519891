"""Token streams of the official ILLUME+ sampling on a tiny crafted model: tests/fixtures/official/sampling/.

Usage: /work/offvenv/bin/python scripts/official_fixtures/sampling.py OFFICIAL_REPO [OUT_DIR] [--commit C]

OFFICIAL_REPO is a checkout of illume-unified-mllm/ILLUME_plus; nothing of it is copied into this project.
Run with the official versions (transformers 4.44.2). What the script runs of it:

- ``generation_eval/models/illume.py`` (imported with the stubs of ``prompts.py`` in this folder: the
  released model's builder, the registry, the vision tokenizer's model code): ``ILLUME.inference_mllm``
  itself, on an ``ILLUME`` object holding a stand-in model and tokenizer (its ``__init__`` would load
  the released weights). So the official code builds the chat prompts, the size tag after the
  assistant prefix, the unconditional prompt, the grid (``calculate_image_token_num``, with the real
  ``RESOLUTION_MAPPING``), ``max_new_tokens``, the ``InferenceConfig`` per-level defaults (pixel top-k
  3x the semantic one), the ``InterleavedLogitsProcessor`` of ``inference_utils.py``, ``set_seed`` and
  the call to transformers' ``generate()``. Only its module-level Qwen2.5 ids (``special_tokens_dict``,
  ``level0_range``, ``level1_range``) are replaced by the stand-in vocabulary's;
- ``illume.mm_utils.tokenizer_image_token`` and ``illume.conversation`` (the ``qwen2`` template), as they are.

The stand-in model is transformers' plain ``Qwen2ForCausalLM`` (fp32, hidden 64, 2 layers, untied head)
in a thin subclass that takes and ignores ``images`` / ``image_sizes`` and, like
``IllumeQwen2ForCausalLM.generate``, embeds the prompt and calls ``generate(inputs_embeds=...)``, so the
logits processors see the generated tokens only. Its vocabulary: a 300-token byte-level BPE with
``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>``, extended as
``prepare_llm_with_extended_vision_tokenizer.py`` does (structure tokens, 32 size tags, then 64 level-0
and 192 level-1 codes as ``<|image_levelL_I|>``); 640 embedding rows (the last 45 unused, as the
release's last 271). ``generation_config.json`` is Qwen2.5-Instruct's (repetition penalty 1.05, eos
``<|im_end|>`` and ``<|endoftext|>``).

A random model never writes ``<start_of_image>`` on its own, so its weights are crafted: hidden
dimension 0 carries a constant (every embedding row has 8 there; row 0 of every ``o_proj`` and
``down_proj`` is zero, so no layer writes it; the final norm keeps it positive), and only three rows of
the LM head read it: the text token "A" (weight 1000/8), ``<start_of_image>`` (990/8) and
``<|im_end|>`` (970/8) (those rows read nothing else); all other rows read dimension 0 not at all.
So in text mode A comes first; the repetition penalty (1.05) then drops it below
``<start_of_image>``, an image follows, and after it ``<|im_end|>`` beats both penalised tokens, each
by a margin that leaves sampling no real choice there: every case exercises text before the image (the
unconditional branch appends the last three generated tokens), the image and eos. Inside the image
only the random part of the logits counts (codes, 64 / 192 per level).

Cases: greedy (``do_sample=False``) and seeded sampling with CFG at the generation settings
(temperature 1.0, top-k 2048, top-p 1.0, cfg 2.0) and at the editing settings (0.7, 512, 0.8, cfg 1.5;
on the generation prompt: the stand-in reads no image), each at 256x256 (9x9 and 16x16 codes) and
512x384 (16x12 and 32x24). For every greedy step the gap between the best and second-best score is
recorded (``min_greedy_gap``): a random model's near-ties could flip between kernels.

Output: ``model/`` (config.json, generation_config.json, model.safetensors, the text tokenizer without
the added tokens, which illume-kit adds itself) and ``cases.json`` (prompt and unconditional ids,
settings, grids, generated ids, official commit).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEXT_VOCAB = 300
ROWS = 640
LEVELS = (64, 192)
CAPTION = "a red circle at the top left"
SIZES = [(256, 256), (512, 384)]
GEN = dict(temperature=1.0, top_k=2048, top_p=1.0, llm_cfg_scale=2.0)  # ILLUME/app_hf.py tips
EDIT = dict(temperature=0.7, top_k=512, top_p=0.8, llm_cfg_scale=1.5)
CASES = [
    ("greedy", GEN, False, 0),
    ("generation", GEN, True, 1),
    ("editing", EDIT, True, 2),
]
CORPUS = [
    "system user assistant You are a helpful assistant.",
    "Generate an image of , the content of image is a red circle at the top left",
    "Generate a random image of",
    "Please edit the image according to the instruction: Reconstruct the image according to the given image",
    "A cat wearing a hat. A dog. A tree. A house.",
]


def _prompts_module():
    spec = importlib.util.spec_from_file_location("official_prompts_fixture", HERE / "prompts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def text_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    if len(out) != TEXT_VOCAB:
        raise SystemExit(f"the BPE has {len(out)} tokens, expected {TEXT_VOCAB}: widen the corpus")
    return out


def extend(tok) -> None:
    """The tokens ``prepare_llm_with_extended_vision_tokenizer.py`` adds, in its order."""
    tok.add_tokens(["<start_of_image>", "<end_of_image>", "<end_of_line>"])
    for level in range(len(LEVELS)):
        tok.add_tokens([f"<start_of_level{level}>", f"<end_of_level{level}>"])
    tok.add_tokens([f"<height_{(i + 1) * 64}>" for i in range(16)])
    tok.add_tokens([f"<width_{(i + 1) * 64}>" for i in range(16)])
    for level, n in enumerate(LEVELS):
        tok.add_tokens([f"<|image_level{level}_{i}|>" for i in range(n)])


def build_model(tok):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    class StandIn(Qwen2ForCausalLM):
        """Takes ``images``/``image_sizes`` and ignores them; generates from embeddings as ILLUME's model."""

        def forward(self, *args, images=None, image_sizes=None, **kwargs):
            return super().forward(*args, **kwargs)

        def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
            position_ids = kwargs.pop("position_ids", None)
            attention_mask = kwargs.pop("attention_mask", None)
            embeds = self.get_model().embed_tokens(inputs)
            return super().generate(
                position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=embeds, **kwargs
            )

        def get_model(self):
            return self.model

    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    config = Qwen2Config(
        vocab_size=ROWS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = StandIn(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.15 if "layers" in name else 1.0))
        model.model.embed_tokens.weight[:, 0] = 8.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0
            layer.mlp.down_proj.weight[0] = 0
        model.model.norm.weight.fill_(1.0)
        head = model.lm_head.weight
        head.mul_(0.35)
        head[:, 0] = 0
        a = tok.convert_tokens_to_ids("A")
        for token, v in (
            (a, 1000.0),
            (tok.convert_tokens_to_ids("<start_of_image>"), 990.0),
            (ids["<|im_end|>"], 970.0),
        ):
            head[token] = 0
            head[token, 0] = v / 8
    # Qwen2.5-Instruct's generation_config.json, which the release inherits
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
    )
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("official", type=Path, help="checkout of illume-unified-mllm/ILLUME_plus")
    ap.add_argument("out", type=Path, nargs="?", default=Path("tests/fixtures/official/sampling"))
    ap.add_argument("--commit", help="the official commit, when OFFICIAL is not a git checkout")
    args = ap.parse_args()
    root = args.official.resolve()
    commit = args.commit
    if commit is None:
        got = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        if got.returncode != 0:
            raise SystemExit(f"{root} is not a git checkout: give its commit with --commit")
        commit = got.stdout.strip()

    import torch
    from transformers import Qwen2ForCausalLM

    fixtures = _prompts_module()
    _, _, official = fixtures._import_official(root)
    import generation_eval.models.inference_utils as inference_utils

    tok = text_tokenizer()
    out_model = args.out / "model"
    out_model.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_model))  # text only: illume-kit adds the layout tokens itself
    extend(tok)
    model = build_model(tok)
    plain = Qwen2ForCausalLM(model.config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(str(out_model), safe_serialization=True)

    # the official module's hard-coded Qwen2.5 ids, for this vocabulary
    sid = {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("start_of_image", "<start_of_image>"), ("end_of_image", "<end_of_image>"),
        ("start_of_level0", "<start_of_level0>"), ("end_of_level0", "<end_of_level0>"),
        ("start_of_level1", "<start_of_level1>"), ("end_of_level1", "<end_of_level1>"),
        ("end_of_line", "<end_of_line>"), ("end_of_text", "<|im_end|>"))}  # fmt: skip
    start = tok.convert_tokens_to_ids("<|image_level0_0|>")
    official.level0_range = (start, start + LEVELS[0])
    official.level1_range = (start + LEVELS[0], start + LEVELS[0] + LEVELS[1])
    official.special_tokens_dict = {**sid, "level0_range": official.level0_range, "level1_range": official.level1_range}

    # greedy steps: the gap between the two best scores after the processor (what argmax sees)
    gaps: list[float] = []
    original_call = inference_utils.InterleavedLogitsProcessor.__call__

    def recording_call(self, input_ids, scores):
        out = original_call(self, input_ids, scores)
        if getattr(self, "_record_gaps", False):
            top = torch.topk(out[0], 2).values
            if torch.isfinite(top[1]):
                gaps.append(float(top[0] - top[1]))
        return out

    inference_utils.InterleavedLogitsProcessor.__call__ = recording_call
    real_prepare = official.ILLUME.prepare_interleaved_logit_processor

    cases = []
    for name, settings, do_sample, seed in CASES:
        for h, w in SIZES:
            eng = fixtures._engine(official, "qwen2", None)
            del eng.prepare_interleaved_logit_processor  # _engine stops there; here it runs

            def prepare(*a, _eng=eng, _greedy=not do_sample, **k):
                procs = real_prepare(_eng, *a, **k)
                procs[0]._record_gaps = _greedy
                return procs

            eng.prepare_interleaved_logit_processor = prepare
            eng.config.model_args.vision_tokenizer_levels = 2
            eng.mllm_model, eng.tokenizer, eng.seed, eng.device = model, tok, seed, "cpu"
            tag = eng.get_resolution_tag_from_resolution((h, w))
            prompt = eng.default_generation_template.format(resolution_tag=tag, content=CAPTION)
            uncond = eng.default_generation_unconditional_template.format(resolution_tag=tag)
            config = eng.prepare_inference_config(resolution=(h, w), unconditional_prompt=uncond, **settings)
            seen: dict = {}
            real_generate = model.generate

            def generate(input_ids, _seen=seen, _real=real_generate, **kw):
                _seen["prompt"] = input_ids[0].tolist()
                _seen["uncond"] = kw["logits_processor"][0].uncond[0].tolist()
                _seen["max_new_tokens"] = kw["max_new_tokens"]
                out = _real(input_ids, **kw)
                _seen["generated"] = out[0].tolist()
                return out

            model.generate = generate
            before = len(gaps)
            with torch.inference_mode():
                result = eng.inference_mllm([dict(prompt=prompt)], config, do_sample=do_sample)
            del model.generate
            gen = seen["generated"]
            codes = result[0]["image_embed_inds"]
            grids = [[eng.h1, eng.w1], [eng.h2, eng.w2]]
            if gen.count(sid["start_of_image"]) < 1 or sid["end_of_image"] not in gen:
                raise SystemExit(f"case {name} {h}x{w}: no complete image in {gen[:20]}...")
            cases.append(
                {
                    "name": name,
                    "size": [h, w],
                    "grids": {"semantic": grids[0], "pixel": grids[1]},
                    "do_sample": do_sample,
                    "seed": seed,
                    "settings": {
                        "temperature": config.temperature,
                        "top_k": config.top_k,
                        "top_p": config.top_p,
                        "cfg": config.llm_cfg_scale,
                        "level_temperature": [config.image_semantic_temperature, config.image_pixel_temperature],
                        "level_top_k": [config.image_semantic_top_k, config.image_pixel_top_k],
                        "level_top_p": [config.image_semantic_top_p, config.image_pixel_top_p],
                    },
                    "max_new_tokens": seen["max_new_tokens"],
                    "prompt_ids": seen["prompt"],
                    "uncond_ids": seen["uncond"],
                    "generated_ids": gen,
                    "codes_per_level": [len(c) for c in codes],
                    "min_greedy_gap": min(gaps[before:]) if len(gaps) > before else None,
                }
            )
            print(f"{name} {h}x{w}: {len(gen)} tokens, codes {[len(c) for c in codes]}, "
                  f"min greedy gap {cases[-1]['min_greedy_gap']}")  # fmt: skip
    record = {
        "official_commit": commit,
        "made_by": "scripts/official_fixtures/sampling.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "text_vocab_size": TEXT_VOCAB,
        "rows": ROWS,
        "levels": list(LEVELS),
        "special_tokens": sid,
        "caption": CAPTION,
        "cases": cases,
    }
    (args.out / "cases.json").write_text(json.dumps(record, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
