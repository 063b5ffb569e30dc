"""jaxbatch: large-batch Transformer training on JAX device meshes."""

__version__ = "0.1.0"
