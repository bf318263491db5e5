"""Checking config values: rules (fields), composing (compose), trust and secrets (guard, redact). No TensorFlow."""
