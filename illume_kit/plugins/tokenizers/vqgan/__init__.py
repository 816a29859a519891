"""VQGAN baseline tokenizer (taming-transformers / LlamaGen VQ-16)."""
