"""Datasets, tokenization and the grain input pipeline."""
