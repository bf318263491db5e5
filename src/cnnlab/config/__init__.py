"""Checking a composed config: value rules, the whole-config schema, the trust guard. Never imports TensorFlow."""
