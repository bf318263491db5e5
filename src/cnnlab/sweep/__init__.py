"""Sweeps: the parent-run callback, cnnlab's launcher and its workers, resume, Ray and SLURM."""
