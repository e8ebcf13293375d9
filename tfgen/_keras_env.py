"""Make sure TensorFlow runs with Keras 2 (tf-keras), which transformers' TF classes need.

Imported first by ``tfgen/__init__.py``: the variable must be set before TensorFlow resolves
``tf.keras``.
"""
import os
import sys

_HOW_TO_FIX = (
    "tfgen needs TensorFlow with Keras 2 (the tf-keras package), because transformers' TF model "
    "classes do not run on Keras 3. TensorFlow was already imported with Keras 3 in this process. "
    "Either import tfgen before tensorflow, or set the environment variable TF_USE_LEGACY_KERAS=1 "
    "before starting Python (export TF_USE_LEGACY_KERAS=1)."
)


def ensure_legacy_keras() -> None:
    """Set TF_USE_LEGACY_KERAS=1, or raise ImportError if TF already chose Keras 3."""
    # TensorFlow's C++ start-up chatter buries our own messages; users can still override this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    was_set = os.environ.get("TF_USE_LEGACY_KERAS", "") in ("1", "true", "True")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if was_set or "tensorflow" not in sys.modules:
        return
    # TensorFlow is imported; tf.keras is resolved lazily on first use, so it may still pick Keras 2.
    import tensorflow as tf

    if not tf.keras.layers.Layer.__module__.startswith("tf_keras"):
        raise ImportError(_HOW_TO_FIX)
