"""Issue 22: a folder run's memory, its splits loaded (`dataset.in_memory=true`) vs streamed from the cache (`false`).

    CNNLAB_DATA_DIR=../shared/datasets python benchmarks/folder_memory.py [--sizes 10000 40000] [--steps 200]

Writes folders of smooth random RGB PNGs (64×64×3, 10 classes) under /tmp/cnnlab-folder-memory (once each),
then for each size and mode runs `run.py model=tiny dataset=folder ... tracking=none` and samples the
process's /proc/<pid>/status every 50 ms: RssAnon (memory the process owns) and RssFile (pages of mapped
files, among them the cache: the kernel's page cache, dropped under pressure). The first run of a size builds
the cache (not timed here: benchmarks/folder_cache.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path("/tmp/cnnlab-folder-memory")
REPO = Path(__file__).resolve().parents[1]
SHAPE = (64, 64, 3)


def write_folder(n: int) -> Path:
    from PIL import Image

    root = ROOT / f"rgb{n}"
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(n)
    grid = np.linspace(0, 1, SHAPE[0])[:, None]
    for i in range(n):
        c = i % 10
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        base = (grid * rng.uniform(40, 200, 3) + grid.T[..., None] * rng.uniform(0, 50, 3)).astype(np.uint8)
        base[..., c % 3] = np.uint8(25 * c)
        Image.fromarray(base).save(root / f"class{c}" / f"{i}.png", compress_level=1)
    (root / "done").write_text("")
    return root


def status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def measure(root: Path, in_memory: str, steps: int) -> dict:
    cmd = [sys.executable, "run.py", "model=tiny", "dataset=folder", f"dataset.path={root}",
           f"dataset.input_shape={list(SHAPE)}".replace(" ", ""), "dataset.val_size=1000",
           f"dataset.cache_dir={ROOT}/cache", f"dataset.in_memory={in_memory}", f"trainer.steps={steps}",
           "trainer.eval_every=100", "trainer.verbose=0", "tracking=none"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"RssAnon": 0.0, "RssFile": 0.0, "VmRSS": 0.0}
    while proc.poll() is None and time.perf_counter() - start < 1800:
        try:
            for k, v in status(proc.pid).items():
                peak[k] = max(peak[k], v)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    out = proc.communicate(timeout=60)[0]
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{out[-2000:]}")
    return {**peak, "seconds": time.perf_counter() - start, "last": out.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; images {SHAPE}, model=tiny, {args.steps} steps of 100")
    for n in args.sizes:
        root = write_folder(n)
        measure(root, "false", 1)  # builds the cache
        float32 = n * int(np.prod(SHAPE)) * 4 / 2**20
        for mode in ("true", "false"):
            r = measure(root, mode, args.steps)
            print(f"{n} images (float32 splits {float32:.0f} MiB), in_memory={mode}: peak RssAnon "
                  f"{r['RssAnon']:.0f} MiB, RssFile {r['RssFile']:.0f} MiB, VmRSS {r['VmRSS']:.0f} MiB, "
                  f"{r['seconds']:.1f} s | {r['last'][:90]}")


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    os.environ.setdefault("CNNLAB_DATA_DIR", str(REPO.parent / "shared" / "datasets"))
    main()
