"""Test-session settings shared by every test.

Offline: no hub lookups (they hang ~47 s before failing). One torch thread: the models under test
are tiny, and on a 2-core machine intra-op threads mostly fight each other (5-50x slower steps when
another process is busy). Subprocesses (CLI tests, torchrun) inherit the environment variables.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
