"""A small SigLIP-style semantic teacher trained in-project (no pretrained weights exist offline)."""
