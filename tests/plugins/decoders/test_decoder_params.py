"""Detokenizer params: torch-free, presets valid, inconsistent configs rejected with a reason."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from illume_kit.plugins.decoders.params import DIFFUSION_PRESETS, DiffusionDetokenizerParams, VQDetokenizerParams


def test_params_module_imports_no_torch():
    code = "import sys, illume_kit.plugins.decoders.params; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(DIFFUSION_PRESETS))
def test_presets_validate(name):
    DiffusionDetokenizerParams(**DIFFUSION_PRESETS[name])


def test_required_presets_exist():
    assert {"tiny", "sdxl-like", "official"} <= set(DIFFUSION_PRESETS)


def test_rejects_unknown_keys_and_inconsistent_levels():
    with pytest.raises(ValidationError):
        VQDetokenizerParams(foo=1)
    with pytest.raises(ValidationError, match="attention_levels"):
        DiffusionDetokenizerParams(block_out_channels=[32, 64, 64], attention_levels=[False, True])
    with pytest.raises(ValidationError, match="norm_num_groups"):
        DiffusionDetokenizerParams(block_out_channels=[30, 64])
    with pytest.raises(ValidationError, match="height, width"):
        DiffusionDetokenizerParams(output_sizes=[[64]])
    with pytest.raises(ValidationError):
        DiffusionDetokenizerParams(output_scale=3)
    with pytest.raises(ValidationError):
        DiffusionDetokenizerParams(scheduler="dpm")
