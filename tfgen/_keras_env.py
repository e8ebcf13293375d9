"""Make sure TensorFlow runs with Keras 2 (tf-keras), which transformers' TF classes need.

Imported first by ``tfgen/__init__.py``: the variable must be set before TensorFlow resolves
``tf.keras``. Nothing here imports TensorFlow on import of tfgen, so `import tfgen` and
`tfgen --help` stay fast; `tfgen.load` calls `import_tensorflow_quietly` when it needs TF.
"""
import contextlib
import functools
import os
import sys

_HOW_TO_FIX = (
    "tfgen needs TensorFlow with Keras 2 (the tf-keras package), because transformers' TF model "
    "classes do not run on Keras 3. TensorFlow was already imported with Keras 3 in this process. "
    "Either import tfgen before tensorflow, or set the environment variable TF_USE_LEGACY_KERAS=1 "
    "before starting Python (export TF_USE_LEGACY_KERAS=1)."
)


def ensure_legacy_keras() -> None:
    """Set TF_USE_LEGACY_KERAS=1, or raise ImportError if TF already chose Keras 3.

    Also sets TF_CPP_MIN_LOG_LEVEL=2 unless the environment chose a level, so TensorFlow's C++
    info and warning lines stay out of the output whoever imports it later, and, while TensorFlow's
    runtime has not started, points its persistent XLA cache under tfgen's cache (`use_xla_cache`);
    once it has, says that the cache is off in this process (`warn_xla_cache_off`).
    """
    was_set = os.environ.get("TF_USE_LEGACY_KERAS", "") in ("1", "true", "True")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules or not _tensorflow_started():
        use_xla_cache()
    else:
        from tfgen import cache

        if cache.wants_xla_flag(os.environ.get("TF_XLA_FLAGS", "")):
            warn_xla_cache_off()
    if was_set or "tensorflow" not in sys.modules:
        return  # TensorFlow will read the variable when it is imported
    # TensorFlow is imported; tf.keras is resolved lazily on first use, so it may still pick Keras 2.
    tf = sys.modules["tensorflow"]
    if not tf.keras.layers.Layer.__module__.startswith("tf_keras"):
        raise ImportError(_HOW_TO_FIX)


def _tensorflow_started() -> bool:
    """Whether TensorFlow, already imported, has started its runtime (its eager context).

    `import tensorflow as tf; import tfgen` is the usual order in TensorFlow code: TensorFlow reads
    TF_XLA_FLAGS when its runtime starts (the first op, or a device listing), not when it is
    imported, so until then tfgen can still add its cache directory. A device listing starts no
    context but reads the flags; `tfgen.decoding.programs` then notices that nothing is persisted
    and says so.
    """
    context = sys.modules.get("tensorflow.python.eager.context")
    current = getattr(context, "_context", None)
    return current is not None and bool(getattr(current, "_initialized", True))


XLA_CACHE_OFF = (
    "TensorFlow started before tfgen was imported, so its persistent XLA cache is off in this "
    "process: compiled programs are not kept for the next start. Import tfgen before running "
    "TensorFlow ops, or start Python with TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR.")


@functools.lru_cache(maxsize=None)  # once per process
def warn_xla_cache_off() -> None:
    """Say that this process persists no XLA executables (`XLA_CACHE_OFF`): TensorFlow read
    TF_XLA_FLAGS before tfgen could add its directory. Everything still runs, only cold."""
    import warnings

    warnings.warn(XLA_CACHE_OFF, RuntimeWarning, stacklevel=2)


def use_xla_cache() -> None:
    """Add tfgen's XLA cache directory to TF_XLA_FLAGS (`tfgen.cache.xla_flag`).

    TensorFlow reads TF_XLA_FLAGS once, when its runtime starts, so this must run before: the
    user's own flags are kept (a persistent cache directory they chose wins), and TFGEN_CACHE=off
    adds nothing.
    """
    from tfgen import cache

    flags = os.environ.get("TF_XLA_FLAGS", "")
    updated = cache.xla_flag(flags)
    if updated != flags:
        os.environ["TF_XLA_FLAGS"] = updated


@functools.lru_cache(maxsize=None)  # once per process: later calls are free
def import_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices without its native start-up chatter on stderr.

    TensorFlow's C++ libraries log (oneDNN notice, CUDA probing) before TF_CPP_MIN_LOG_LEVEL is
    read, straight to file descriptor 2, burying our own messages. TF_CPP_MIN_LOG_LEVEL=0 in the
    environment shows everything.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() == "0":
        import tensorflow  # noqa: F401
        return
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # probes CUDA now, while its messages are silenced


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while keeping Python's `sys.stderr` working.

    Python-level writes (warnings, our messages) still reach the real stderr through a duplicate
    of the original descriptor; only what native code writes to fd 2 is dropped.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    python_stderr = sys.stderr
    replaced = python_stderr is sys.__stderr__
    if replaced:
        sys.stderr = _stderr_copy(saved, python_stderr)
    os.dup2(null, 2)
    try:
        yield
    finally:
        if replaced:
            sys.stderr.flush()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


_STDERR_COPY = []


def _stderr_copy(fd: int, like):
    """A file on a duplicate of the real stderr, made once and never closed: logging handlers
    created while fd 2 is silenced (TensorFlow's, at import) keep writing to it afterwards."""
    if not _STDERR_COPY:
        _STDERR_COPY.append(open(os.dup(fd), "w", buffering=1, encoding=like.encoding, errors=like.errors))
    return _STDERR_COPY[0]
