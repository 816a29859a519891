"""Building on torch's meta device (``compose --meta``): components read no weight file there."""

from __future__ import annotations

import torch


def building_on_meta() -> bool:
    """True inside ``with torch.device("meta")``: a component then builds from config alone (a
    pretrained folder's config, never its weights), since meta tensors have shapes but no storage."""
    return torch.get_default_device().type == "meta"
