"""A small real image classifier in PyTorch: scikit-learn's 8x8 digits (1797 images).

The data ships with scikit-learn, so nothing is downloaded. The split into train, validation
and test is fixed (SPLIT_SEED), whatever the training seed, so runs compare on the same test
set. Every `checkpoint_every`-th epoch is checkpointed (each, by default), and the last one
done whenever training ends, a stop included; a resumed attempt continues after the last saved
epoch, with the same per-epoch shuffling an uninterrupted run would have used. The trained
model's weights end in `ctx.output_dir/model.pt`, kept with the job (`fleet artifacts JOB`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workers.context import JobContext

if TYPE_CHECKING:
    import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1  # of the whole set
N_FEATURES = 64
N_CLASSES = 10
MODEL_FILE = "model.pt"  # the trained weights (a state_dict), in ctx.output_dir


def load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"val"|"test": (x float32 in [0, 1], shape (n, 64); y int64)}, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=VAL_FRACTION / (1 - TEST_FRACTION),
        random_state=SPLIT_SEED,
        stratify=y_rest,
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


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

    Returns {"accuracy": test accuracy, "loss": test loss, "val_accuracy", "train_loss",
    "epochs": last epoch completed, "resumed_from": checkpointed epoch or None}, plus
    "stopped": True when a stop was asked before the last epoch.
    """
    import torch
    from torch import nn

    from workers.runners import torch as runner

    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    data = {name: _tensors(x, y) for name, (x, y) in load_split().items()}
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    resumed_from = runner.restore(ctx, model, optimizer)
    done = saved = resumed_from or 0
    train_loss: float | None = None
    stopped = False
    x_train, y_train = data["train"]
    for epoch in range(done + 1, epochs + 1):
        if ctx.should_stop():
            stopped = True
            break
        model.train()
        order = torch.randperm(
            len(x_train), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        )
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        train_loss = total / len(order)
        val_loss, val_accuracy = _evaluate(model, loss_fn, *data["val"])
        if epoch % checkpoint_every == 0:
            runner.save(ctx, epoch, model, optimizer)
            saved = epoch
        ctx.report(epoch, loss=train_loss, accuracy=val_accuracy, val_loss=val_loss)
        done = epoch
    if done > saved:  # the last epochs, or a stop between checkpoints: nothing done is lost
        runner.save(ctx, done, model, optimizer)

    torch.save(model.state_dict(), ctx.output_dir / MODEL_FILE)  # `fleet artifacts` gets it
    test_loss, test_accuracy = _evaluate(model, loss_fn, *data["test"])
    _, val_accuracy = _evaluate(model, loss_fn, *data["val"])
    result: dict[str, Any] = {
        "accuracy": test_accuracy,
        "loss": test_loss,
        "val_accuracy": val_accuracy,
        "train_loss": train_loss,
        "epochs": done,
        "resumed_from": resumed_from,
    }
    if stopped:
        result["stopped"] = True
    # one line for `fleet logs` (the epochs are in `fleet metrics`), in the store with the rest
    print(f"trained {done} epochs: test accuracy {result['accuracy']:.3f}, "
          f"{MODEL_FILE} in the job's outputs", flush=True)
    return result


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return torch.from_numpy(x), torch.from_numpy(y)


def _evaluate(
    model: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(loss_fn(logits, y))
        accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy
