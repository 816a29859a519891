"""illume-kit: compose unified multimodal LLMs (ILLUME+-style) from pluggable parts."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("illume_kit")
