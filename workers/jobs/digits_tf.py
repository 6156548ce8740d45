"""The digits classifier of `digits_torch`, in Keras 3 on TensorFlow.

Same data split, model shape, parameters and result keys, so the two frameworks compare
directly. A Keras callback reports each epoch, checkpoints as `digits_torch` does, and ends
training early when a stop is asked; a resumed attempt restores weights and optimizer state and
continues with `initial_epoch` after the last saved epoch. The trained model ends in
`ctx.output_dir/model.keras`, kept with the job (`fleet artifacts JOB`).
"""

from __future__ import annotations

import os
from typing import Any

from workers.context import JobContext
from workers.jobs.digits_torch import N_CLASSES, N_FEATURES, load_split

MODEL_FILE = "model.keras"  # the trained model (Keras 3 format), in ctx.output_dir


def train(
    ctx: JobContext,
    epochs: int = 12,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    hidden: int = 64,
    checkpoint_every: int = 1,
) -> dict[str, Any]:
    """Train an MLP (64 → hidden → 10, Adam); report loss and validation accuracy per epoch.

    Returns the same keys as `digits_torch.train`, and checkpoints as it does.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from workers.runners import tensorflow as runner

    data = load_split()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((N_FEATURES,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(N_CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    resumed_from = runner.restore(ctx, model)
    epoch_hook = _EpochHook(ctx, runner, epochs, checkpoint_every)
    epoch_hook.done = resumed_from or 0
    if epoch_hook.done < epochs and not ctx.should_stop():
        x_train, y_train = data["train"]
        model.fit(
            x_train,
            y_train,
            batch_size=batch_size,
            epochs=epochs,
            initial_epoch=epoch_hook.done,
            validation_data=data["val"],
            callbacks=[_callback(keras, epoch_hook)],
            shuffle=True,
            verbose=0,
        )
    model.save(str(ctx.output_dir / MODEL_FILE))  # the whole model, kept: `fleet artifacts JOB`
    test_loss, test_accuracy = model.evaluate(*data["test"], verbose=0)
    _, val_accuracy = model.evaluate(*data["val"], verbose=0)
    result: dict[str, Any] = {
        "accuracy": float(test_accuracy),
        "loss": float(test_loss),
        "val_accuracy": float(val_accuracy),
        "train_loss": epoch_hook.train_loss,
        "epochs": epoch_hook.done,
        "resumed_from": resumed_from,
    }
    if epoch_hook.done < epochs:
        result["stopped"] = True
    # one line for `fleet logs` (the epochs are in `fleet metrics`), in the store with the rest
    print(f"trained {epoch_hook.done} epochs: test accuracy {result['accuracy']:.3f}, "
          f"{MODEL_FILE} in the job's outputs", flush=True)
    return result


class _EpochHook:
    """What happens at the end of each epoch, kept apart from Keras so it reads plainly."""

    def __init__(self, ctx: JobContext, runner: Any, epochs: int, checkpoint_every: int) -> None:
        self.ctx, self.runner, self.epochs = ctx, runner, epochs
        self.every = checkpoint_every
        self.done = 0
        self.train_loss: float | None = None

    def epoch_end(self, model: Any, epoch: int, logs: dict[str, Any]) -> bool:
        """Report epoch `epoch` (1-based), checkpointing every `every`-th, the last, and the
        one a stop ends on; True when training should stop."""
        self.train_loss = float(logs["loss"])
        saved = epoch % self.every == 0 or epoch == self.epochs
        if saved:
            self.runner.save(self.ctx, epoch, model)
        self.ctx.report(
            epoch,
            loss=self.train_loss,
            accuracy=logs["val_accuracy"],
            val_loss=logs["val_loss"],
        )
        self.done = epoch
        stop = self.ctx.should_stop()
        if stop and not saved:
            self.runner.save(self.ctx, epoch, model)
        return stop


def _callback(keras: Any, hook: _EpochHook) -> Any:
    class FleetCallback(keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped (Any)
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if hook.epoch_end(self.model, epoch + 1, logs or {}):
                self.model.stop_training = True

    return FleetCallback()
