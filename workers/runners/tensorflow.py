"""TensorFlow/Keras runner: thread settings, and checkpoints of a Keras model.

Checkpoints are Keras 3 `.weights.h5` files: the model's weights and, once the model is
compiled and its optimizer built, the optimizer's variables (iteration count, moments), so a
resumed run continues the same optimisation rather than restarting Adam from zero.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from workers.context import Allotment, JobContext

WEIGHTS_FILE = "model.weights.h5"


def prepare(resources: Allotment) -> None:
    """Use exactly the CPUs given, and let GPU memory grow instead of grabbing the whole card.

    TensorFlow accepts these only before its runtime starts (RuntimeError after), hence the
    guards; TF_NUM_INTRAOP_THREADS in the environment (set by the caller) covers that case.
    GPU selection itself is CUDA_VISIBLE_DEVICES, set by the caller before the import.
    """
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(resources.threads)
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_inter_op_parallelism_threads(1)
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.experimental.set_memory_growth(gpu, True)


def save(ctx: JobContext, step: int, model: Any) -> Path:
    """Checkpoint a Keras model (weights, plus optimizer variables once built) after `step`."""

    def write(directory: Path) -> None:
        model.save_weights(str(directory / WEIGHTS_FILE))

    return ctx.checkpoint(step, write)


def restore(ctx: JobContext, model: Any) -> int | None:
    """Load the newest valid checkpoint into a built, compiled `model`; returns its step (the
    last one completed, so training resumes at step + 1), or None when there is none."""
    found = ctx.restore()
    if found is None:
        return None
    step, directory = found
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        # The file holds optimizer variables only if they exist when loading, too.
        optimizer.build(model.trainable_variables)
    model.load_weights(str(directory / WEIGHTS_FILE))
    return step
