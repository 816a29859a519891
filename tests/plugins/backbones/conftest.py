"""Backbone tests run torch single-threaded: on small shared CPUs intra-op threads fight each other
and a tiny training step gets ~10x slower. Restored after each module."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
