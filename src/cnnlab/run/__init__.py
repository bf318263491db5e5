"""One run: the Hydra job body, training and its loop settings, optimizers, checkpoints and resume, diagnostics."""
