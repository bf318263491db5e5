"""Data sets: loading and checking the arrays, and the input pipelines that batch them."""
