"""Semantic-only baseline tokenizer (frozen SigLIP tower + adapter + one quantizer)."""
