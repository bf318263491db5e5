"""Issue 22: first vs second load of a 20,000-image folder (MNIST PNGs in word-named class folders).

    PYTHONPATH=src CNNLAB_DATA_DIR=../shared/datasets python benchmarks/folder_cache.py
Writes the folder under /tmp/wtdata (once); the cache goes to /tmp/wtdata/cache20k (emptied first).
"""
# first vs second load of a 20,000-image folder (MNIST PNGs, 10 word-named classes)
import sys, time, os, shutil
import numpy as np
from pathlib import Path
from PIL import Image
root = Path("/tmp/wtdata/mnist20k")
WORDS = "zero one two three four five six seven eight nine".split()
if not root.exists():
    with np.load(os.environ["CNNLAB_DATA_DIR"] + "/mnist.npz") as f: x, y = f["x_train"][:20000], f["y_train"][:20000]
    t = time.perf_counter()
    for w in WORDS: (root / w).mkdir(parents=True)
    for i in range(len(x)): Image.fromarray(x[i]).save(root / WORDS[y[i]] / f"{i}.png")
    print(f"wrote 20000 PNGs in {time.perf_counter()-t:.1f} s")
from cnnlab.data.datasets import check_dataset, load_data
cache = "/tmp/wtdata/cache20k"
shutil.rmtree(cache, ignore_errors=True)
spec = check_dataset({"name": "folder", "path": str(root), "input_shape": [28, 28, 1], "num_classes": 10, "val_size": 2000, "cache_dir": cache})
for k in ("first (decode, cache miss)", "second (cache hit)"):
    t, c = time.perf_counter(), time.process_time()
    d = load_data(spec)
    print(f"load_data {k}: {time.perf_counter()-t:.2f} s wall, {time.process_time()-c:.2f} s CPU; {len(d.x_train)}/{len(d.x_val)}/{len(d.x_test)}")
import resource; print("peak RSS MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)
