"""Transformer models in Flax NNX; every parameter carries logical axis names (`logical_axes`)."""
