"""DualViTok, ILLUME+'s dual visual tokenizer (arXiv 2504.01934 §3.1).

A frozen ViT teacher feeds a small transformer adapter whose codes (SimVQ, 32768) must reconstruct
the teacher's features (semantic branch); a MoVQ-style CNN encodes pixels into a second SimVQ
codebook (98304); the pixel decoder sees both code maps, so the LLM can generate coarse semantic
tokens first and fine pixel tokens second. Modules: ``params`` (torch-free), ``pixel``,
``perceptual``, ``loss``, ``model``, ``convert``; the teacher and the semantic branch, shared with the
SigLIP-only tokenizer, are ``illume_kit.plugins.tokenizers.common``.

Kept torch-free on import: ``params`` is imported by recipe validation.
"""
