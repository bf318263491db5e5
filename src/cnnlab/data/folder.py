"""Your own images (`dataset=folder dataset.path=DIR`): one subfolder per class, decoded once into a cache.

Layout (the `keras.utils.image_dataset_from_directory` convention):

    DIR/<class>/<image>...                   classes are the sorted subfolder names; a seeded,
                                             stratified `dataset.test_split` of each class is the test set
    DIR/train/<class>/...  DIR/test/<class>/...   given splits (DIR/test is optional; its classes must be train's)

Images may sit in nested folders below a class folder; any file whose suffix Pillow
knows (PNG, JPEG, BMP, GIF, TIFF, WebP ...) is an image, hidden files and other files
are skipped. Each image is converted to `dataset.input_shape` (L for one channel, RGB
for three, resized with Pillow's bilinear filter) exactly as `cnnlab.predict` converts
the files it is given, so a served model sees what training saw.

The cache: the first run decodes every image once into uint8 `.npy` files in
`<cache_dir>/<DIR name>-<key>/` (x_train.npy, y_train.npy, and x_test.npy/y_test.npy
for a DIR/test), where `cache_dir` is `dataset.cache_dir`, else $CNNLAB_CACHE_DIR,
else ~/.cache/cnnlab, and `key` hashes the folder's resolved path, every image's
relative name, size and modification time, and the input shape: a changed folder
gets a new entry (old ones can be deleted by hand at any time). Later runs and sweep
jobs open the arrays memory-mapped (`np.load(mmap_mode='r')`), so start-up reads
no pixels until they are used, and decoding writes straight into a memory-mapped file
(memory stays bounded while the cache is built). Two runs building the same entry
at once are safe: one builds (under a `filelock` lock) into a temporary folder that is
renamed into place (`os.replace`) when complete; the other waits, then opens it.

Every problem is one `DataError` line naming the file or folder, before any MLflow run
exists: a missing folder (as given and as resolved), fewer than two class folders,
an empty class folder, a DIR/test whose classes differ from DIR/train, an unreadable
or truncated image.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data.lazy import LazyImages
from cnnlab.errors import DataError

KEY = "dataset.path"
CACHE_ENV = "CNNLAB_CACHE_DIR"
CACHE_VERSION = 1  # bump when the cache's format or the conversion changes


def image_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {s.lower() for s in Image.registered_extensions()}


def convert_image(image, shape) -> np.ndarray:
    """A Pillow image as uint8 (H, W, C): L or RGB by the channels, resized (bilinear) to H × W.

    The one conversion both training (the cache) and `cnnlab.predict` use.

    >>> from PIL import Image
    >>> convert_image(Image.new("RGB", (56, 40), (255, 0, 0)), (28, 28, 1)).shape
    (28, 28, 1)
    """
    from PIL import Image

    height, width, channels = shape
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def decode(path: Path, shape) -> np.ndarray:
    """One image file, decoded whole (a truncated file fails) and converted. DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return convert_image(image, shape)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        detail = str(e).splitlines()[0][:150] if str(e) else "no detail"
        raise DataError(KEY, f"{path} is not a readable image ({type(e).__name__}: {detail})") from None


@dataclass
class FolderScan:
    """What a folder holds, without decoding: classes, and (relative file, label) per given split."""

    root: Path  # resolved
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]  # "train" (or "all") and, for DIR/test, "test"
    stats: list[tuple[str, int, int]] = field(default_factory=list)  # (relative name, size, mtime_ns)

    def key(self, shape) -> str:
        h = hashlib.sha256(f"v{CACHE_VERSION} {self.root} {list(shape)}\n".encode())
        for name, size, mtime in self.stats:
            h.update(f"{name}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()[:20]

    def counts(self, split: str) -> list[int]:
        n = [0] * len(self.classes)
        for _, label in self.splits[split]:
            n[label] += 1
        return n


def resolve_folder(given: str) -> Path:
    """`dataset.path` as a folder; DataError with the path as given and as resolved."""
    path = Path(given).expanduser()
    if not path.is_dir():
        what = "a file, not a folder" if path.exists() else "no such folder"
        raise DataError(KEY, f"{given!r} is {what} (resolved: {path.resolve()}); "
                             "give a folder with one subfolder of images per class")
    return path.resolve()


def class_folders(folder: Path) -> list[str]:
    """The sorted subfolder names of `folder` (hidden ones skipped); DataError for fewer than two."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise DataError(KEY, f"{folder} holds {len(names)} class folder(s){': ' + names[0] if names else ''}; "
                             "a classifier needs at least two (one subfolder of images per class)")
    return names


def layout(root: Path) -> tuple[Path, Path | None]:
    """(the folder of training classes, the folder of test classes or None)."""
    if (root / "train").is_dir():
        test = root / "test"
        return root / "train", test if test.is_dir() else None
    return root, None


def count_classes(given: str) -> int:
    """How many classes `dataset.path` holds (for `num_classes: auto`); cheap: no file is listed."""
    train, _ = layout(resolve_folder(given))
    return len(class_folders(train))


def scan_folder(given: str) -> FolderScan:
    """List the folder's images (no decoding) and check its layout. Raises DataError."""
    root = resolve_folder(given)
    train, test = layout(root)
    classes = class_folders(train)
    suffixes = image_suffixes()
    scan = FolderScan(root, classes, {})
    for split, folder in (("train" if test else "all", train), ("test", test)):
        if folder is None:
            continue
        if split == "test":
            found = class_folders(folder)
            if found != classes:
                missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
                raise DataError(KEY, f"{folder} has classes that differ from {train}'s: "
                                     + "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                                              f"extra {', '.join(extra)}" if extra else "") if s))
        rows = []
        for label, name in enumerate(classes):
            files = list_images(folder / name, suffixes)
            if not files:
                raise DataError(KEY, f"class folder {folder / name} holds no images "
                                     f"(image suffixes: .png, .jpg, .jpeg, .bmp, .gif, .tif, .webp ...)")
            for f in files:
                rel = str(f.relative_to(root))
                st = f.stat()
                scan.stats.append((rel, st.st_size, st.st_mtime_ns))
                rows.append((rel, label))
        scan.splits[split] = rows
    return scan


def list_images(folder: Path, suffixes: set[str]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return out


def cache_root(given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnlab"


def cached_arrays(scan: FolderScan, shape, cache_dir: str | None, workers: int = 4) -> tuple[dict, Path]:
    """{split: (uint8 images memory-mapped, int32 labels)} from the cache, decoding the folder on a miss."""
    root = cache_root(cache_dir)
    entry = root / f"{scan.root.name}-{scan.key(shape)}"
    if not (entry / "meta.json").is_file():
        from filelock import FileLock

        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError("dataset.cache_dir", f"cannot create the image cache folder {root}: {e}") from None
        try:
            with FileLock(str(entry) + ".lock"):
                if not (entry / "meta.json").is_file():  # another run may have built it while this one waited
                    build(scan, shape, entry, workers)
        except OSError as e:  # unwritable, or full: a decode failure is a DataError, never an OSError here
            raise DataError("dataset.cache_dir", f"cannot write the image cache in {root} "
                                                 f"({type(e).__name__}: {e}); set dataset.cache_dir "
                                                 f"or {CACHE_ENV} to a writable folder") from None
    out = {}
    for split in scan.splits:
        out[split] = (np.load(entry / f"x_{split}.npy", mmap_mode="r"), np.load(entry / f"y_{split}.npy"))
    return out, entry


def build(scan: FolderScan, shape, entry: Path, workers: int) -> None:
    import shutil

    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for split, rows in scan.splits.items():
            x = np.lib.format.open_memmap(tmp / f"x_{split}.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(rows), *shape))
            paths = [scan.root / rel for rel, _ in rows]
            with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow decodes without the GIL
                for start in range(0, len(paths), 512):  # a bounded number of decoded images in flight
                    chunk = paths[start : start + 512]
                    for i, image in enumerate(pool.map(lambda p: decode(p, shape), chunk)):
                        x[start + i] = image
            x.flush()
            del x
            np.save(tmp / f"y_{split}.npy", np.array([label for _, label in rows], dtype=np.int32))
        (tmp / "meta.json").write_text(json.dumps({"root": str(scan.root), "classes": scan.classes,
                                                   "shape": list(shape), "images": len(scan.stats)}))
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices in a seeded random order, test indices): `fraction` of each class, at least one, to test.

    >>> tr, te = stratified_split(np.array([0] * 10 + [1] * 5), 0.2, 0)
    >>> sorted(np.bincount(np.array([0] * 10 + [1] * 5)[te]).tolist()), len(tr)
    ([1, 2], 12)
    """
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1) if fraction > 0 else 0
        test.append(rng.permutation(idx)[:k])
    test = np.sort(np.concatenate(test)) if test else np.array([], int)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return rng.permutation(train), test


def folder_arrays(spec) -> tuple[tuple, str, list[str]]:
    """(x_train, y_train, x_test, y_test), the source, the class names, for a checked folder `dataset`.

    The training images come in a seeded random order (`dataset.split_seed`), so the last
    `val_size` of them (the validation split) are a random sample of every class.
    """
    scan = scan_folder(spec.path)
    check_class_count(spec, scan)
    arrays, entry = cached_arrays(scan, spec.input_shape, spec.cache_dir)
    rng_seed = spec.split_seed
    if "test" in arrays:
        (x, y), (x_test, y_test) = arrays["train"], arrays["test"]
        order = np.random.default_rng(rng_seed).permutation(len(y))
        x_test = LazyImages(x_test)
    else:
        x, y = arrays["all"]
        order, test = stratified_split(y, spec.test_split, rng_seed)
        x_test, y_test = LazyImages(x, test), y[test]
    if not len(y_test):
        raise DataError("dataset.test_split", f"{spec.test_split} leaves no test images in {scan.root}")
    # views of the memory-mapped cache: nothing is read until used (cnnlab.data.datasets.streamed)
    return (LazyImages(x, order), y[order], x_test, y_test), str(scan.root), scan.classes


def check_headers(scan: FolderScan) -> None:
    """Each image's header (Pillow opens files lazily: no pixel is decoded). DataError naming the first bad one.

    A file truncated after its header is only found by decoding it (the real run's cache build).
    """
    from PIL import Image, UnidentifiedImageError

    for rel, _, _ in scan.stats:
        path = scan.root / rel
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            detail = str(e).splitlines()[0][:150] if str(e) else "no detail"
            raise DataError(KEY, f"{path} is not a readable image ({type(e).__name__}: {detail})") from None


def check_class_count(spec, scan: FolderScan) -> None:
    if spec.num_classes != len(scan.classes):
        raise DataError("dataset.num_classes", f"{spec.num_classes} but {scan.root} holds {len(scan.classes)} "
                                               "class folders (num_classes: auto counts them)")


def describe(spec) -> tuple[str, int, int]:
    """The dry run's look at a folder data set, without decoding: (classes and images per class, train, test).

    Also reads every image's header (`check_headers`).
    """
    scan = scan_folder(spec.path)
    check_class_count(spec, scan)
    check_headers(scan)
    lines = [f"folder {scan.root}: {len(scan.classes)} classes, {len(scan.stats)} images"]
    splits = list(scan.splits)
    for split in splits:
        per = scan.counts(split)
        lines.append(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in zip(scan.classes, per)))
    if "test" in scan.splits:
        n_train, n_test = len(scan.splits["train"]), len(scan.splits["test"])
    else:
        per = scan.counts("all")
        n_test = sum(min(max(1, round(spec.test_split * n)), n - 1) if spec.test_split > 0 else 0 for n in per)
        n_train = sum(per) - n_test
    return "\n".join(lines), n_train, n_test
