"""Your own images (issue 22): `dataset=folder`, its checks and cache, class names end to end, `augment`.

The folders are written here: MNIST digits as PNGs in class folders named by words (from the
shipped mnist.npz), and RGB JPEGs of mixed sizes in DIR/train and DIR/test. Small folders, the
tiny model, a few steps; TensorFlow is loaded once in this process (two `run.py` subprocesses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from cnnlab.errors import DataError
from cnnlab.schema import check_config

MNIST = Path(os.environ["CNNLAB_DATA_DIR"]) / "mnist.npz"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
QUICK = ["model=tiny", "optimizer=adam", "optimizer.lr=0.01", "trainer.batch_size=32", "trainer.verbose=0"]


def write_digits(root: Path, per_class: int = 30, offset: int = 0) -> dict:
    """MNIST training digits as PNGs in root/<word>/; returns {word: [(path, label)]}."""
    from PIL import Image

    with np.load(MNIST) as f:
        x, y = f["x_train"][:5000], f["y_train"][:5000]
    out = {}
    for c, word in enumerate(WORDS):
        (root / word).mkdir(parents=True, exist_ok=True)
        out[word] = []
        for i in np.flatnonzero(y == c)[offset : offset + per_class]:
            path = root / word / f"{i}.png"
            Image.fromarray(x[i]).save(path)
            out[word].append(path)
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


def folder_config(compose, root, tmp_path, *more):
    return check_config(compose("dataset=folder", f"dataset.path={root}", "dataset.input_shape=[28,28,1]",
                                f"dataset.cache_dir={tmp_path}/cache", *QUICK, *more))


def runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.skipif(not MNIST.is_file(), reason=f"needs {MNIST}")
def test_mnist_png_folder_trains_evaluates_and_predicts_class_names(compose, digits, tmp_path, capsys, monkeypatch):
    from cnnlab.data import folder
    from cnnlab.data.datasets import load_data
    from cnnlab.evaluate import evaluate
    from cnnlab.predict import predict
    from cnnlab.run.train import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = folder_config(compose, digits, tmp_path, "trainer.steps=120", "trainer.eval_every=60",
                        f"tracking.uri={uri}")
    assert run.dataset.num_classes == 10 and run.arch.output_shape == (10,)  # num_classes: auto
    result = train(run)
    assert result["test_accuracy"] > 0.3  # 60 test images of 10 classes: chance is 0.1

    client, (r,) = runs(uri)
    sorted_words = sorted(WORDS)
    assert json.loads(r.data.tags["class_names"]) == sorted_words  # classes: the sorted folder names
    assert r.data.params["dataset.name"] == "folder" and r.data.params["dataset.num_classes"] == "10"
    # a second load reads the cache: nothing is decoded again
    monkeypatch.setattr(folder, "decode", lambda *a: pytest.fail("decoded again"))
    again = load_data(run.dataset)
    assert len(again.x_train) + len(again.x_val) + len(again.x_test) == 300

    capsys.readouterr()
    try:
        evaluate([f"runs:/{r.info.run_id}/model", "--tracking-uri", uri])
        out = capsys.readouterr().out
        for word in WORDS:  # the per-class table names each class
            assert f"  {word} " in out, out
        assert "60 images" in out.splitlines()[-1]
        pngs = [digits / "seven" / sorted(os.listdir(digits / "seven"))[0], digits / "zero" /
                sorted(os.listdir(digits / "zero"))[0]]
        found = predict([f"runs:/{r.info.run_id}/model", *map(str, pngs), "--tracking-uri", uri])
        from cnnlab.record.model_ref import resolve

        assert resolve(client, f"runs:/{r.info.run_id}/model").class_names == sorted_words  # the MLmodel's metadata
    finally:
        from cnnlab.backend import keras

        keras.config.enable_interactive_logging()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(name in sorted_words for row in found for name, _ in row)
    assert lines[0].startswith(f"{pngs[0]}: {found[0][0][0]} (")  # `seven (0.97)  one (0.02) ...`


def write_photos(root: Path, per_class: int = 20, seed: int = 0) -> None:
    """Red-ish 'cat' and blue-ish 'dog' RGB JPEGs of mixed sizes (and one grayscale PNG) in train/ and test/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for name, channel in (("cat", 0), ("dog", 2)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(12, 60, 2)
                x = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
                x[..., channel] = rng.integers(150, 255, (h, w))
                Image.fromarray(x).save(root / split / name / f"{i}.jpg", quality=90)
    Image.fromarray(np.full((20, 30), 90, np.uint8)).save(root / "train" / "cat" / "gray.png")  # L → RGB


def test_rgb_jpegs_of_mixed_sizes_with_given_splits_augmentation_and_normalization(compose, tmp_path, capsys):
    """Also `dataset.normalize=auto`: the training split's per-channel mean/std, inside the logged model."""
    from cnnlab.data.datasets import load_data
    from cnnlab.evaluate import evaluate
    from cnnlab.predict import predict
    from cnnlab.run.train import train

    root = tmp_path / "photos"
    write_photos(root)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = folder_config(compose, root, tmp_path, "dataset.input_shape=[16,16,3]", "dataset.val_size=4",
                        "augment=flip_crop", "trainer.steps=30", "trainer.eval_every=30", "dataset.normalize=auto",
                        f"tracking.uri={uri}")
    data = load_data(run.dataset)
    assert data.x_train.shape[1:] == (16, 16, 3) and len(data.x_test) == 20  # DIR/test is the test split
    assert len(data.x_train) + len(data.x_val) == 41 and data.class_names == ("cat", "dog")
    assert np.allclose(data.x_train.reshape(-1, 3).mean(0), 0, atol=1e-4)  # normalized by the training split
    assert np.allclose(data.x_train.reshape(-1, 3).std(0), 1, atol=1e-3)
    result = train(run)
    assert result["test_accuracy"] >= 0.9  # red vs blue
    _, (r,) = runs(uri)
    assert r.data.params["augment.layers.crop.padding"] == "4"  # the augmentation is in the run's params
    assert json.loads(r.data.tags["normalize"])["mean"] == pytest.approx(list(data.normalize[0]))
    capsys.readouterr()
    try:
        # the served model (raw uint8 in, the scaling and normalization inside) scores as the run did
        assert evaluate([f"runs:/{r.info.run_id}/model", "--tracking-uri", uri])["test_accuracy"] == \
            pytest.approx(result["test_accuracy"])
        found = predict([f"runs:/{r.info.run_id}/model", str(root / "test" / "dog" / "0.jpg"), "--top-k", "2",
                         "--tracking-uri", uri])
    finally:
        from cnnlab.backend import keras

        keras.config.enable_interactive_logging()
    assert found[0][0][0] == "dog"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{root / 'test' / 'dog' / '0.jpg'}: dog (")


@pytest.mark.parametrize("breakage, says", [
    ("corrupt", "cat/bad.jpg is not a readable image"),
    ("truncated", "cat/0.jpg is not a readable image"),
    ("empty", "class folder {root}/train/dog holds no images"),
    ("test_classes", "{root}/test has classes that differ from {root}/train's: extra bird"),
    ("one_class", "{root}/train holds 1 class folder(s): cat"),
])
def test_bad_folders_are_one_line_and_no_run(compose, tmp_path, breakage, says):
    import shutil

    from cnnlab.run.train import train

    root = tmp_path / "photos"
    write_photos(root, per_class=4)
    cat = root / "train" / "cat"
    if breakage == "corrupt":
        (cat / "bad.jpg").write_bytes(b"not a jpeg at all")
    elif breakage == "truncated":
        data = (cat / "0.jpg").read_bytes()
        (cat / "0.jpg").write_bytes(data[: len(data) // 2])
    elif breakage == "empty":
        shutil.rmtree(root / "train" / "dog")
        (root / "train" / "dog").mkdir()
    elif breakage == "test_classes":
        (root / "test" / "bird").mkdir()
        (root / "test" / "bird" / "x.png").write_bytes((cat / "gray.png").read_bytes())
    else:
        shutil.rmtree(root / "train" / "dog")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(DataError) as info:
        run = folder_config(compose, root, tmp_path, "dataset.input_shape=[16,16,3]", "dataset.val_size=2",
                            "trainer.steps=5", f"tracking.uri={uri}")
        train(run)
    message = str(info.value)
    assert message.startswith("dataset.path: ") and "\n" not in message
    assert says.format(root=root) in message, message
    assert not (tmp_path / "mlflow.db").exists() or not runs(uri)[1]  # no MLflow run
    assert not [p for p in (tmp_path / "cache").glob("*") if ".tmp-" in p.name]  # no half-built cache left


def test_a_given_num_classes_must_match_the_folders(tmp_path):
    from cnnlab.data.datasets import check_dataset
    from cnnlab.data.describe import describe_data

    write_photos(tmp_path / "photos", per_class=2)
    spec = check_dataset({"name": "folder", "path": str(tmp_path / "photos"), "input_shape": [8, 8, 3],
                          "num_classes": 3, "val_size": 1})
    with pytest.raises(DataError, match="dataset.num_classes: 3 but .*photos holds 2 class folders"):
        describe_data(spec)


def test_missing_folder_names_it_as_given_and_resolved(compose, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"dataset.path: 'no/such' is no such folder \(resolved: "
                                        + str(tmp_path / "no" / "such")):
        check_config(compose("dataset=folder", "dataset.path=no/such", *QUICK))


def test_cache_is_built_once_when_two_loads_race(tmp_path):
    """Two threads load the same new folder at once: one decodes each image, both get the same arrays."""
    from concurrent.futures import ThreadPoolExecutor

    from cnnlab.data import folder
    from cnnlab.data.datasets import check_dataset, load_raw

    root = tmp_path / "photos"
    write_photos(root, per_class=6)
    spec = check_dataset({"name": "folder", "path": str(root), "input_shape": [8, 8, 3], "num_classes": 2,
                          "val_size": 2, "cache_dir": str(tmp_path / "cache")})
    decoded = []
    real = folder.decode

    def counting(path, shape):
        decoded.append(path)
        return real(path, shape)

    folder.decode, saved = counting, folder.decode
    try:
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda _: load_raw(spec), range(2))
    finally:
        folder.decode = saved
    assert len(decoded) == 12 + 1 + 6  # every file once: 12 + gray.png train, 6 test
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "x_test.npy", "x_train.npy", "y_test.npy",
                                                        "y_train.npy"]
    assert isinstance(np.load(entry / "x_train.npy", mmap_mode="r"), np.memmap)
    (root / "train" / "dog" / "0.jpg").touch()  # a changed folder: a new cache entry
    os.utime(root / "train" / "dog" / "0.jpg", ns=(1, 1))
    load_raw(spec)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_augmentation_touches_training_batches_only_and_is_seeded():
    from cnnlab.data.augment import Augmenter, check_augment
    from cnnlab.data.pipeline import training_batches, validation_input

    x = np.random.default_rng(0).random((64, 12, 12, 1), dtype=np.float32)
    y = np.arange(64) % 4
    shift = check_augment({"name": "shift", "layers": {"s": {"type": "translation", "height_factor": 0.2,
                                                              "width_factor": 0.2}}})
    plain = training_batches(x, y, 16, 8, seed=3, pipeline="pydataset")
    aug = training_batches(x, y, 16, 8, seed=3, augment=shift)
    resumed = training_batches(x, y, 16, 8, seed=3, augment=shift, start=5)
    again = training_batches(x, y, 16, 8, seed=3, augment=shift)
    for i in range(8):
        assert np.array_equal(plain[i][1], aug[i][1])  # the same images in the same order
        assert not np.array_equal(plain[i][0], aug[i][0])  # ... augmented
        assert np.array_equal(aug[i][0], again[i][0])  # seeded: the same run augments the same way
    assert np.array_equal(resumed[0][0], aug[5][0])  # a resumed run augments batch 5 as the first did
    assert validation_input(x, y, 16)  # the validation split goes to Keras untouched (no augment argument)
    assert not np.array_equal(Augmenter(shift, 4, (12, 12, 1))(x[:16], 0), aug[0][0])  # another seed


def test_deterministic_augmented_runs_are_bit_exact_and_served_models_do_not_augment(compose, tmp_path):
    import mlflow
    import mlflow.pyfunc

    from cnnlab.data.datasets import load_raw
    from cnnlab.run.train import train

    fast = ["model=tiny", "dataset=synthetic", "optimizer=adam", "trainer.steps=12", "trainer.eval_every=6",
            "trainer.verbose=0", "augment=shift", "trainer.deterministic=true"]
    a = train(check_config(compose(*fast, "tracking=none")))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    b = train(check_config(compose(*fast, f"tracking.uri={uri}")))
    assert a["test_loss"] == b["test_loss"]
    _, (r,) = runs(uri)
    mlflow.set_tracking_uri(uri)  # runs:/ URIs resolve against it
    model = mlflow.pyfunc.load_model(f"runs:/{r.info.run_id}/model")
    x = load_raw(check_config(compose(*fast, "tracking=none")).dataset).x_test[:50]
    assert np.array_equal(model.predict(x), model.predict(x))  # no augmentation in the served model


def test_dry_run_checks_split_sizes_without_decoding():
    from cnnlab.data.datasets import check_dataset
    from cnnlab.data.describe import describe_data

    spec = check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10, "val_size": 70000})
    if MNIST.is_file():
        with pytest.raises(DataError, match="dataset.val_size: 70000 leaves no training images out of 60000"):
            describe_data(spec)
        ok = check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10, "train_size": 1000,
                            "val_size": 100})
        assert describe_data(ok).endswith("900 train, 100 val, 10000 test images, 10 classes")


@pytest.mark.skipif(not MNIST.is_file(), reason=f"needs {MNIST}")
def test_cli_dry_run_shows_the_folder_and_augmentation_and_a_corrupt_image_exits_2(tmp_path):
    root = tmp_path / "digits"
    write_digits(root, per_class=5)
    args = ["dataset=folder", f"dataset.path={root}", "dataset.input_shape=[28,28,1]", "model=tiny",
            f"dataset.cache_dir={tmp_path}/cache", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path}/hydra"]
    p = run_cli(*args, "augment=shift", "dry_run=true", "dataset.val_size=2")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "all: eight 5, five 5, four 5, nine 5, one 5" in p.stdout
    assert "data: folder: 38 train, 2 val, 10 test images, 10 classes" in p.stdout
    assert "augment: shift, on training batches only: shift: translation(" in p.stdout
    (root / "four" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    from cnnlab.data.datasets import check_dataset
    from cnnlab.data.describe import describe_data

    with pytest.raises(DataError, match="four/broken.png is not a readable image"):  # the dry run's header check
        describe_data(check_dataset({"name": "folder", "path": str(root), "input_shape": [28, 28, 1],
                                     "num_classes": 10, "val_size": 2}))
    p = run_cli(*args, "dataset.val_size=2", "trainer.steps=2")
    assert p.returncode == 2, p.stderr[-2000:]
    (line,) = [s for s in p.stderr.strip().splitlines() if s.strip()]
    assert "four/broken.png is not a readable image" in line
    assert not (tmp_path / "mlflow.db").exists() or not runs(f"sqlite:///{tmp_path}/mlflow.db")[1]


def test_a_streamed_folder_trains_exactly_as_a_loaded_one(compose, digits, tmp_path, monkeypatch):
    """`dataset.in_memory=false`: the splits stay views of the memory-mapped cache, read and scaled a batch at a
    time (training and validation batches, the test pass), and the run is the loaded run to the bit."""
    from cnnlab.data import datasets
    from cnnlab.data.lazy import LazyImages
    from cnnlab.run.train import train

    common = ["trainer.steps=20", "trainer.eval_every=10", "trainer.deterministic=true", "tracking=none",
              "dataset.val_size=40", "dataset.normalize={mean:[0.13],std:[0.3]}"]
    loaded = folder_config(compose, digits, tmp_path, *common, "dataset.in_memory=true")
    streamed = folder_config(compose, digits, tmp_path, *common, "dataset.in_memory=false")
    a, b = datasets.load_data(loaded.dataset), datasets.load_data(streamed.dataset)
    assert all(isinstance(x, np.ndarray) for x in (a.x_train, a.x_val, a.x_test))
    assert all(isinstance(x, LazyImages) for x in (b.x_train, b.x_val, b.x_test))
    for x, lazy in ((a.x_train, b.x_train), (a.x_val, b.x_val), (a.x_test, b.x_test)):
        assert x.shape == lazy.shape and x.dtype == lazy.dtype and np.array_equal(x, np.asarray(lazy))
    assert train(loaded)["test_loss"] == train(streamed)["test_loss"]  # tf.data gather vs batches read from disk

    # auto streams when the float32 splits would take over a quarter of the memory available
    monkeypatch.setattr(datasets, "available_memory", lambda: 4 * a.x_train.nbytes)
    auto = folder_config(compose, digits, tmp_path, *common)
    assert isinstance(datasets.load_data(auto.dataset).x_train, LazyImages)
    monkeypatch.setattr(datasets, "available_memory", lambda: 400 * a.x_train.nbytes)
    assert isinstance(datasets.load_data(auto.dataset).x_train, np.ndarray)

    # dataset.normalize=auto on a streamed split: the loaded split's statistics to within float64 rounding
    stats = [datasets.load_data(folder_config(compose, digits, tmp_path, *common[:-1], "dataset.normalize=auto",
                                              f"dataset.in_memory={m}").dataset).normalize for m in ("true", "false")]
    assert np.allclose(stats[0], stats[1], rtol=1e-9, atol=0)


def test_in_memory_takes_auto_true_or_false(compose, digits, tmp_path):
    with pytest.raises(Exception, match=r"dataset\.in_memory: expected auto, true or false, got 'yes'"):
        folder_config(compose, digits, tmp_path, "dataset.in_memory=yes")
