"""The network: layer kinds, init schemes, the builder (YAML stack → shape table → keras.Model), the size guard."""

from cnnlab.model import merges  # noqa: F401  registers add, multiply and concat with the layer registry
