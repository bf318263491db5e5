"""Bad data files end in one DataError line naming the key, the bad value and the file, before any run exists.

Each case writes a small .npz in the Keras layout to tmp_path with one thing wrong
and loads it as `dataset.path` (or through $CNNLAB_DATA_DIR on the command line).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from cnnlab.data.datasets import check_dataset, load_data
from cnnlab.errors import ConfigError, DataError

N_TRAIN, N_TEST = 20, 6


def good_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, N_TRAIN).astype(np.uint8),
        "x_test": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, N_TEST).astype(np.uint8),
    }


def write(folder, **changes) -> str:
    """mnist.npz in `folder`: the good arrays with `changes` applied; returns its path."""
    arrays = {**good_arrays(), **changes}
    path = folder / "mnist.npz"
    np.savez(path, **arrays)
    return str(path)


def spec_for(path: str, **extra) -> dict:
    return check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10, "val_size": 4,
                          "path": path, **extra})


def nan_pixels():
    x = good_arrays()["x_train"].astype(np.float32) / 255
    x[3, 5, 5] = np.nan
    x[7, 0, 0] = np.inf
    return {"x_train": x}


def fractional_labels():
    y = good_arrays()["y_train"].astype(np.float64)
    y[2] = 3.5
    return {"y_train": y}


def label_out_of_range():
    y = good_arrays()["y_test"].astype(np.int64)
    y[4] = 10
    return {"y_test": y}


BAD = [
    # (changes, expected error path, substrings of the message besides the file's path)
    pytest.param(nan_pixels(), "dataset.path", ["x_train", "2 NaN or infinite pixel value(s)", "first in image 3"],
                 id="nan-pixels"),
    pytest.param({"x_test": good_arrays()["x_test"].astype(np.float32)}, "dataset.pixel_range",
                 ["null (float pixels must lie in [0, 1])", "float32 x_test pixels in [",
                  "dataset.pixel_range=[0,255]"],
                 id="float-0-255-pixels"),
    pytest.param(fractional_labels(), "dataset.path", ["y_train", "fractional labels (3.5 at index 2)"],
                 id="fractional-labels"),
    pytest.param(label_out_of_range(), "dataset.num_classes", ["10 but y_test", "label 10 at index 4"],
                 id="label-out-of-range"),
    pytest.param({"y_train": np.full(N_TRAIN, -1, np.int64)}, "dataset.num_classes", ["label -1 at index 0"],
                 id="negative-label"),
    pytest.param({"y_train": good_arrays()["y_train"][:-1]}, "dataset.path",
                 [f"holds {N_TRAIN} x_train images but {N_TRAIN - 1} y_train labels"], id="y-shorter-than-x"),
    pytest.param({"x_test": np.zeros((0, 28, 28), np.uint8), "y_test": np.zeros(0, np.uint8)}, "dataset.path",
                 ["holds no test images (x_test is empty)"], id="empty-test-split"),
    pytest.param({"y_train": np.eye(10, dtype=np.float32)[good_arrays()["y_train"]]}, "dataset.path",
                 ["y_train", "has shape [20, 10]", "one-hot"], id="one-hot-labels"),
    pytest.param({"x_train": np.full((N_TRAIN, 28, 28), "a")}, "dataset.path", ["x_train", "<U1"],
                 id="string-pixels"),
]


@pytest.mark.parametrize("changes,key,expected", BAD)
def test_bad_file_is_refused_with_one_line(tmp_path, changes, key, expected):
    path = write(tmp_path, **changes)
    with pytest.raises(DataError) as err:
        load_data(spec_for(path))
    text = str(err.value)
    assert err.value.path == key and text.startswith(f"{key}: ") and "\n" not in text, text
    assert path in text, text
    for part in expected:
        assert part in text, text


def test_a_float_file_with_pixels_outside_the_given_range_names_the_range(tmp_path):
    x = good_arrays()["x_train"].astype(np.float32) * 2  # 0..510
    with pytest.raises(DataError) as err:
        load_data(spec_for(write(tmp_path, x_train=x), pixel_range=[0, 255]))
    assert str(err.value).startswith("dataset.pixel_range: [0, 255] but ")
    assert "pixels in [0, 5" in str(err.value)


def test_empty_training_split_is_refused(tmp_path):
    path = write(tmp_path, x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="holds no training images"):
        load_data(spec_for(path, val_size=0))


def test_float_pixels_in_0_1_load_as_given(tmp_path):
    good = good_arrays()
    x = good["x_train"].astype(np.float64) / 255
    data = load_data(spec_for(write(tmp_path, x_train=x, y_train=good["y_train"].astype(np.float32))))
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.x_train[..., 0], x[:16].astype(np.float32))
    np.testing.assert_array_equal(data.y_train, good["y_train"][:16])
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (16, 4, N_TEST)


def test_float_0_255_pixels_load_with_pixel_range_set(tmp_path):
    good = good_arrays()
    x = good["x_test"].astype(np.float32)
    data = load_data(spec_for(write(tmp_path, x_test=x), pixel_range=[0, 255]))
    np.testing.assert_allclose(data.x_test[..., 0], good["x_test"] / 255.0, rtol=1e-6)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0  # uint8 x_train under the same range


def test_pixel_range_maps_minus_one_to_one(tmp_path):
    x = np.linspace(-1, 1, N_TRAIN * 28 * 28, dtype=np.float32).reshape(N_TRAIN, 28, 28)
    data = load_data(spec_for(write(tmp_path, x_train=x, x_test=x[:N_TEST]), pixel_range=[-1, 1]))
    assert data.x_train.min() == 0.0 and data.x_val.max() == 1.0
    np.testing.assert_allclose(data.x_test[..., 0], (x[:N_TEST] + 1) / 2, atol=1e-7)


def test_uint8_pixels_are_divided_by_255(tmp_path):
    good = good_arrays()
    data = load_data(spec_for(write(tmp_path)))
    np.testing.assert_array_equal(data.x_test[..., 0], good["x_test"].astype(np.float32) / 255.0)


@pytest.mark.parametrize("value,message", [
    ([255, 0], "low < high"), ([0], "[low, high]"), ("0..255", "[low, high]"), ([0, "x"], "finite number"),
])
def test_pixel_range_is_validated(value, message):
    with pytest.raises(ConfigError) as err:
        check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10, "pixel_range": value})
    assert err.value.path == "dataset.pixel_range" and message in str(err.value)


# --- the command line: one line, exit 2, no MLflow run --------------------------------------------------------------

CLI_BAD = [
    pytest.param(nan_pixels(), ["error: CNNLAB_DATA_DIR: x_train in", "NaN"], id="nan-pixels"),
    pytest.param({"y_train": good_arrays()["y_train"][:-1]}, ["error: CNNLAB_DATA_DIR: ", "y_train labels"],
                 id="y-shorter-than-x"),
    pytest.param({"x_test": good_arrays()["x_test"].astype(np.float32)},
                 ["error: dataset.pixel_range: ", "dataset.pixel_range=[0,255]"], id="float-0-255-pixels"),
]


@pytest.mark.parametrize("changes,expected", CLI_BAD)
def test_cli_bad_data_one_line_exit_2_and_no_run(tmp_path, changes, expected):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = write(data_dir, **changes)
    p = run_cli("model=tiny", "trainer.steps=5", "trainer.verbose=0", "dataset.val_size=4",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/out",
                env={"CNNLAB_DATA_DIR": str(data_dir)}, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, p.stderr
    assert path in errors[0]
    for part in expected:
        assert part in errors[0], errors[0]
    assert not (tmp_path / "mlflow.db").exists()  # no run recorded, not even a store created


def test_a_missing_data_folder_is_named_as_the_folder(tmp_path, monkeypatch):
    spec = check_dataset({"name": "mnist", "input_shape": [28, 28, 1], "num_classes": 10})
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        load_data(spec)
    assert str(err.value) == (f"CNNLAB_DATA_DIR: the folder {tmp_path / 'nowhere'} does not exist; set CNNLAB_DATA_DIR "
                              "to the folder that holds mnist.npz, as an absolute path "
                              "(export CNNLAB_DATA_DIR=/data/datasets)")
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp_path))  # the folder is there, the file is not
    with pytest.raises(DataError, match=f"CNNLAB_DATA_DIR: mnist data file not found at {tmp_path}/mnist.npz"):
        load_data(spec)
