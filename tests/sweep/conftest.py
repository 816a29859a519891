"""Fixtures of the sweep tests: sweep files in tmp folders."""

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write_sweep(tmp_path):
    def write(text: str, name: str = "sweep.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write
