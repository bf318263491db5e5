"""Import Keras once, quietly, with the backend settings cnnlab wants.

`from cnnlab.backend import keras` is the one place the heavy import
happens, so config-only paths never pay for it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter

import keras  # noqa: E402

__all__ = ["keras"]
