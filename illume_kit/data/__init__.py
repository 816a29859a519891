"""Datasets served to every trainer: the procedural shapes world, an image folder, Fashion-MNIST.

Items are dicts with ``image`` (3,H,W) float in [0,1] and ``caption``; the shapes world adds exact
ground truth. Params live in ``illume_kit.data.params`` (torch-free); classes are looked up through
the ``dataset`` registry role. ``batching`` groups items by image size.
"""
