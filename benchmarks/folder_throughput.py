"""Issue 22: decode and augment images/s against the training step's (TensorFlow, in one process).

    PYTHONPATH=src CNNLAB_DATA_DIR=../shared/datasets python benchmarks/folder_throughput.py
Needs the folder benchmarks/folder_cache.py writes; run from the repository root.
"""
# decode and augment images/s vs the training step's images/s (in-process, tracking=none)
import os, time, shutil, sys
import numpy as np
from pathlib import Path
from PIL import Image
from hydra import compose, initialize_config_dir
from cnnlab.schema import check_config
from cnnlab.data.augment import Augmenter, check_augment
from cnnlab.data.datasets import check_dataset, load_raw
from omegaconf import OmegaConf

# 1. decode: 5,000 RGB JPEGs of mixed sizes (24..64 px) -> 32x32x3 cache
root = Path("/tmp/wtdata/rgb5k")
if not root.exists():
    with np.load(os.environ["CNNLAB_DATA_DIR"] + "/mnist.npz") as f: x, y = f["x_train"][:5000], f["y_train"][:5000]
    rng = np.random.default_rng(0)
    for c in range(10): (root / f"c{c}").mkdir(parents=True)
    for i in range(5000):
        s = int(rng.integers(24, 65))
        im = Image.fromarray(np.stack([x[i], 255 - x[i], x[i] // 2], -1)).resize((s, s))
        im.save(root / f"c{y[i]}" / f"{i}.jpg", quality=90)
for name, path, shape in (("mnist20k PNG 28x28x1", "/tmp/wtdata/mnist20k", [28, 28, 1]), ("rgb5k JPEG ->32x32x3", str(root), [32, 32, 3])):
    cache = f"/tmp/wtdata/tp-cache"
    shutil.rmtree(cache, ignore_errors=True)
    spec = check_dataset({"name": "folder", "path": path, "input_shape": shape, "num_classes": 10, "val_size": 100, "cache_dir": cache})
    t = time.perf_counter(); raw = load_raw(spec); dt = time.perf_counter() - t
    n = len(raw.x_train) + len(raw.x_val) + len(raw.x_test)
    print(f"decode {name}: {n} images in {dt:.2f} s = {n/dt:,.0f} images/s (cache build, 4 threads)")

# 2. augment: batches of 100
for preset, shape in (("shift", (28, 28, 1)), ("flip_crop", (32, 32, 3))):
    cfg = OmegaConf.to_container(OmegaConf.load(f"conf/augment/{preset}.yaml"))
    a = Augmenter(check_augment(cfg), 0, shape)
    xb = np.random.default_rng(0).random((100, *shape), dtype=np.float32)
    a(xb, 0)
    t = time.perf_counter()
    for i in range(30): a(xb, i)
    dt = time.perf_counter() - t
    print(f"augment {preset} on {shape}: {3000/dt:,.0f} images/s")

# 3. the training step's consumption
def run(*o):
    with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
        r = check_config(compose("config", overrides=["tracking=none", "trainer.verbose=0", "trainer.eval_every=null", *o]))
    from cnnlab.run.train import train
    return train(r)["images_per_second"]
for o in (["model=ltfn5", "dataset=mnist", "dataset.train_size=6000", "dataset.val_size=100", "trainer.steps=40"],
          ["model=allconv", "dataset=synthetic", "dataset.input_shape=[32,32,3]", "trainer.steps=15", "dataset.val_size=100"]):
    for aug in ("augment=none", "augment=shift" if "ltfn5" in o[0] else "augment=flip_crop"):
        print(f"train {o[0]} {o[1]} {aug}: {run(*o, aug):,.0f} images/s")
