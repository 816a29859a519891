"""Backbone Params and presets: torch-free, validated, official sizes copied right."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from illume_kit.plugins.backbones.params import (
    GPT2_PRESETS,
    LLAMA_PRESETS,
    QWEN2_PRESETS,
    GPT2Params,
    LlamaParams,
    Qwen2Params,
)

FAMILIES = [(Qwen2Params, QWEN2_PRESETS), (LlamaParams, LLAMA_PRESETS), (GPT2Params, GPT2_PRESETS)]


def test_params_module_imports_no_torch():
    code = (
        "import sys, illume_kit.plugins.backbones.params; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("params_cls,presets", FAMILIES)
def test_every_preset_validates_and_has_tiny_and_official(params_cls, presets):
    assert {"tiny", "official"} <= set(presets)
    for _name, values in presets.items():
        params_cls(**values)
    tiny = params_cls(**presets["tiny"])
    assert (tiny.hidden_size, tiny.num_layers, tiny.num_heads) == (128, 2, 4)


def test_qwen25_presets_copy_the_released_configs():
    p = Qwen2Params(**QWEN2_PRESETS["qwen2.5-3b"])
    assert (p.hidden_size, p.num_layers, p.num_heads, p.num_kv_heads) == (2048, 36, 16, 2)
    assert (p.intermediate_size, p.vocab_size, p.tie_word_embeddings) == (11008, 151936, True)
    q = Qwen2Params(**QWEN2_PRESETS["qwen2.5-7b"])
    assert (q.hidden_size, q.num_layers, q.num_heads, q.num_kv_heads, q.vocab_size) == (3584, 28, 28, 4, 152064)
    assert QWEN2_PRESETS["official"] == QWEN2_PRESETS["qwen2.5-3b"]
    assert GPT2Params(**GPT2_PRESETS["gpt2"]).hidden_size == 768
    assert LlamaParams(**LLAMA_PRESETS["llama-3.2-1b"]).num_kv_heads == 8


def test_bad_params_are_rejected_with_reasons():
    with pytest.raises(ValidationError, match="divisible by num_heads"):
        Qwen2Params(hidden_size=130, num_heads=4)
    with pytest.raises(ValidationError, match="num_kv_heads"):
        LlamaParams(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValidationError, match="new_rows_init"):
        GPT2Params(new_rows_init="zeros")
    with pytest.raises(ValidationError, match="extra"):
        Qwen2Params(hidden=64)
    with pytest.raises(ValidationError):
        Qwen2Params(vocab_size=100)  # below the byte alphabet


def test_every_field_is_documented():
    for params_cls, _ in FAMILIES:
        for name, field in params_cls.model_fields.items():
            assert field.description, f"{params_cls.__name__}.{name} has no description"
