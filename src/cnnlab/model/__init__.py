"""The network: layer kinds, init schemes, the builder (YAML stack → shape table → keras.Model), the size guard."""
