"""cnnlab: config-driven CNN experiments on Keras, tracked in MLflow."""

__version__ = "0.1.0"
