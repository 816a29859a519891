"""The entry-point module: one hook returning one ComponentSpec. Targets stay lazy strings."""

from illume_kit import hookimpl
from illume_kit.core.registry import ComponentSpec


@hookimpl
def illume_kit_components():
    return [
        ComponentSpec(
            role="tokenizer",
            name="fsq-conv",
            target="illume_kit_fsq.model:FSQTokenizer",
            params="illume_kit_fsq.params:FSQTokenizerParams",
            presets="illume_kit_fsq.params:PRESETS",
            summary="Small conv autoencoder with FSQ (example third-party plugin)",
            provides=("pixel_decoder", "code_maps"),
        )
    ]
