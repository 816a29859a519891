"""Fixtures of the model tests: tiny unified models built from ``model_fakes``."""

import pytest
from model_fakes import make_model


@pytest.fixture(scope="module")
def model2():
    return make_model()


@pytest.fixture(scope="module")
def model1():
    return make_model(("pixel",))
