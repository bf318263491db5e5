"""`python -m cnnlab.predict MODEL_URI IMAGE [IMAGE ...]`: the top classes of image files, with probabilities.

Each PNG/JPEG (anything Pillow reads) is converted to the model's channels (L for one,
RGB for three), resized to its height × width and cast to the dtype its signature names
(uint8 for the built-in data sets), then the model (`cnnlab.record.export`: raw pixels in,
probabilities out) classifies them all in one call. One line per file, each class by the
name the model carries (its data set's class names; numbers for a model logged without them):

    digit.png: 7 (0.9731)  2 (0.0150)  3 (0.0042)
    photo.jpg: cat (0.9700)  dog (0.0200)  bird (0.0050)

A missing or unreadable file is one line and exit 2, before the model is loaded.

Example:
    python -m cnnlab.predict runs:/<run_id>/model digit.png other.jpg --top-k 3
    python -m cnnlab.predict models:/mnist-cnn@champion *.png --tracking-uri sqlite:///x/mlflow.db
"""

from __future__ import annotations

import sys

import numpy as np

from cnnlab.cli import Arguments, run_command
from cnnlab.errors import ConfigError

KEY = "IMAGE"


def arguments() -> Arguments:
    p = Arguments(prog="python -m cnnlab.predict", description=__doc__.splitlines()[0])
    p.add_argument("model_uri", metavar="MODEL_URI", help="runs:/<run_id>/model, models:/<name>@<alias>, ...")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG/JPEG files")
    p.add_argument("--top-k", type=int, default=3, help="how many classes per image (default 3)")
    p.add_argument("--tracking-uri", metavar="URI", help="the MLflow store (default: $MLFLOW_TRACKING_URI, "
                                                         "else <repo>/mlruns/mlflow.db)")
    return p


def open_images(paths: list[str]) -> list:
    """Each file as a decoded Pillow image; ConfigError (key IMAGE) naming the first one that is not."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, not half way through the batch
                images.append(image.copy())
        except FileNotFoundError:
            raise ConfigError(KEY, f"no file {path!r}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ConfigError(KEY, f"{path!r} is not a readable image ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:150] if str(e) else 'no detail'})") from None
    return images


def to_array(image, shape: tuple[int, ...], dtype: np.dtype, pixel_range=(0.0, 255.0)) -> np.ndarray:
    """One Pillow image as the model's raw input (H, W, C): channels, size and dtype converted.

    8-bit pixels map onto `pixel_range`, the range the model's data set stores (float models).

    >>> from PIL import Image
    >>> to_array(Image.new("RGB", (56, 40), (255, 0, 0)), (28, 28, 1), np.dtype("uint8")).shape
    (28, 28, 1)
    >>> float(to_array(Image.new("L", (2, 2), 255), (2, 2, 1), np.dtype("float32"), (0.0, 1.0)).max())
    1.0
    """
    from cnnlab.data.folder import convert_image

    x = convert_image(image, shape)  # as a folder data set's images were converted for training
    if np.dtype(dtype).kind == "f":
        lo, hi = pixel_range
        return (lo + x.astype(dtype) * ((hi - lo) / 255.0)).astype(dtype)
    return x.astype(dtype)


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most probable classes, most probable first.

    >>> top_k(np.array([0.1, 0.7, 0.2]), 2)
    [(1, 0.7), (2, 0.2)]
    """
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(c), float(probabilities[c])) for c in order]


def predict(argv: list[str]) -> list[list[tuple[int, float]]]:
    args = arguments().parse_args(argv)
    if args.top_k < 1:
        raise ConfigError("--top-k", f"expected a positive number of classes, got {args.top_k}")
    images = open_images(args.images)  # before MLflow and TensorFlow load: a typo is one quick line

    from cnnlab.data.checks import source_range
    from cnnlab.evaluate import open_client
    from cnnlab.record.model_ref import load_pyfunc, param_value, resolve

    ref = resolve(open_client(args.tracking_uri), args.model_uri)
    if len(ref.shape) != 3 or ref.shape[-1] not in (1, 3):
        raise ConfigError("MODEL_URI", f"{ref.uri} takes images of shape {list(ref.shape)}; "
                                       "image files give 1 (grayscale) or 3 (RGB) channels")
    if args.top_k > ref.classes:
        raise ConfigError("--top-k", f"{args.top_k} but {ref.uri} knows {ref.classes} classes")
    # a float model takes its data set's stored range (`dataset.pixel_range`, else [0, 1]); uint8 files give 0..255
    given = param_value("pixel_range", ref.run.data.params.get("dataset.pixel_range", "None")) if ref.run else None
    pixel_range = source_range(ref.dtype, given)
    batch = np.stack([to_array(image, ref.shape, ref.dtype, pixel_range) for image in images])
    probabilities = np.asarray(load_pyfunc(ref.uri).predict(batch))
    found = [top_k(p, args.top_k) for p in probabilities]
    names = ref.class_names or [str(c) for c in range(ref.classes)]
    for path, classes in zip(args.images, found):
        print(f"{path}: " + "  ".join(f"{names[c]} ({p:.4f})" for c, p in classes))
    return [[(names[c], p) for c, p in classes] for classes in found]


def main(argv: list[str] | None = None) -> None:
    run_command(predict, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
