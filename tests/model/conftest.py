"""Fixtures of the model tests: tiny unified models built from ``model_fakes``."""

import pytest
import torch

from model_fakes import make_model

torch.set_num_threads(1)  # tiny models: one thread is faster on the shared 2-core box


@pytest.fixture(scope="module")
def model2():
    return make_model()


@pytest.fixture(scope="module")
def model1():
    return make_model(("pixel",))
