import subprocess
import sys

import pytest
from pydantic import ValidationError

from illume_kit.data.params import FashionMNISTParams, ImageFolderParams, ShapesParams


def test_params_modules_import_no_torch():
    code = (
        "import sys, illume_kit.data.params, illume_kit.plugins.tokenizers.vqgan.params, "
        "illume_kit.plugins.tokenizers.teacher.params; "
        "print(sorted(m for m in ('torch', 'open_clip', 'diffusers', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_common_fields_and_forbidden_extras():
    for cls, extra in ((ShapesParams, {}), (ImageFolderParams, {"root": "x"}), (FashionMNISTParams, {})):
        p = cls(image_size=32, split="test", num_samples=5, seed=3, **extra)
        assert (p.image_size, p.split, p.num_samples, p.seed) == (32, "test", 5, 3)
        with pytest.raises(ValidationError):
            cls(spilt="test", **extra)
        with pytest.raises(ValidationError):
            cls(split="validation", **extra)
    with pytest.raises(ValidationError, match="train"):
        ImageFolderParams(root="x", val_fraction=0.5, test_fraction=0.5)
