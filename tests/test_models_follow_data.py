"""A shipped model takes its input shape and class count from the data set; a model may still pin them."""

from __future__ import annotations

import pytest

from cnnlab.errors import ConfigError
from cnnlab.model.builder import build_model, verify_model
from cnnlab.run.train import train
from cnnlab.schema import check_config


@pytest.mark.parametrize("model", ["ltfn5", "lenet5", "allconv", "tiny", "resnet20", "resmnist", "sepnet"])
@pytest.mark.parametrize("dataset,shape", [("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))])
def test_every_shipped_model_fits_every_data_set(compose, model, dataset, shape):
    run = check_config(compose(f"model={model}", f"dataset={dataset}"))
    assert run.arch.input_shape == shape and run.arch.output_shape == (10,)


@pytest.mark.parametrize("model,shape", [("allconv", [32, 32, 3]), ("lenet5", [28, 28, 1])])
def test_models_build_and_train_on_data_of_another_shape(compose, model, shape):
    """Synthetic images of CIFAR-10's (and Fashion-MNIST's) shape, with 7 classes: the output follows too."""
    shape_text = "[" + ",".join(map(str, shape)) + "]"
    run = check_config(compose(f"model={model}", "dataset=synthetic", f"dataset.input_shape={shape_text}",
                               "dataset.num_classes=7", "dataset.train_size=256", "dataset.val_size=64",
                               "dataset.test_size=64", "optimizer=adam", "trainer.steps=4", "trainer.eval_every=2",
                               "trainer.verbose=0", "tracking=none"))
    assert run.arch.input_shape == tuple(shape) and run.arch.output_shape == (7,)
    verify_model(run.arch, build_model(run.arch, seed=0))
    if model == "allconv":  # one training run is enough to show the data reaches the model (~10 s each)
        result = train(run)
        assert result["steps"] == 4 and 0 <= result["test_accuracy"] <= 1


def test_a_pinned_shape_that_disagrees_names_the_key(compose):
    with pytest.raises(ConfigError) as info:
        check_config(compose("model=lenet5", "model.input_shape=[28,28,1]", "dataset=cifar10"))
    assert info.value.path == "model.input_shape" and "cifar10 gives [32, 32, 3]" in str(info.value)
