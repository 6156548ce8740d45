"""A model of your own: a small PyTorch MLP that learns a 1-D curve, y = x·sin(3x) + noise.

The points are made here, from a fixed seed, so nothing is downloaded and every attempt of the
job (a resumed one too) trains on the same data. The fleet calls `train(ctx, **params)`; `ctx`
is how the job talks to it:

    ctx.restore()          the newest committed checkpoint as (step, folder), or None
    ctx.checkpoint(s, fn)  fn(folder) writes the files; the fleet seals and keeps them
    ctx.report(s, **m)     progress: the step and its metrics (`fleet status`, `fleet plot`)
    ctx.log(text)          a line in `fleet logs`, as print() writes one
    ctx.should_stop()      True once the job is cancelled or its node drains
    ctx.wait(seconds)      sleep, waking at once on a stop
    ctx.output_dir         a folder kept with the job: `fleet artifacts JOB` downloads it

If the job's node dies, the fleet starts it again elsewhere and `ctx.restore()` hands back the
last checkpoint: training goes on from the epoch after it, with the same per-epoch shuffling
an uninterrupted run would have used. The trained weights end in `ctx.output_dir/model.pt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


def make_data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` points of the curve on [-2, 2], with a little noise, the same for one seed."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, 1, generator=gen) * 4 - 2
    y = x * torch.sin(3 * x) + 0.05 * torch.randn(samples, 1, generator=gen)
    return x, y


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 1))


def train(ctx: Any, epochs: int = 30, hidden: int = 32, lr: float = 0.01, batch_size: int = 64,
          samples: int = 2048, seed: int = 0, epoch_pause: float = 0.0) -> dict[str, Any]:
    """Fit the curve with Adam; report the training and validation loss after each epoch and
    checkpoint each epoch. `epoch_pause` waits that many seconds after each epoch: a run slow
    enough to watch, or to stop a node under."""
    x, y = make_data(samples, seed)
    cut = samples * 9 // 10  # the last tenth is held out for validation
    x_train, y_train, x_val, y_val = x[:cut], y[:cut], x[cut:], y[cut:]
    torch.manual_seed(seed)
    model = make_model(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()

    start = 0
    found = ctx.restore()
    if found is not None:
        state = torch.load(found[1] / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
        print(f"resuming after epoch {start}", flush=True)

    done, train_loss, val_loss = start, float("nan"), float("nan")
    for epoch in range(start + 1, epochs + 1):
        if ctx.should_stop():
            break
        model.train()
        order = torch.randperm(cut, generator=torch.Generator().manual_seed(seed * 1_000_003
                                                                             + epoch))
        total = 0.0
        for first in range(0, cut, batch_size):
            batch = order[first:first + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        train_loss = total / cut
        model.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(x_val), y_val).item()
        ctx.checkpoint(epoch, _writer(epoch, model, optimizer))
        ctx.report(epoch, loss=train_loss, val_loss=val_loss)
        print(f"epoch {epoch}/{epochs} loss {train_loss:.4f} val_loss {val_loss:.4f}",
              flush=True)
        done = epoch
        if epoch_pause and epoch < epochs and ctx.wait(epoch_pause):
            break

    torch.save(model.state_dict(), ctx.output_dir / MODEL_FILE)  # `fleet artifacts JOB`
    return {"epochs": done, "loss": train_loss, "val_loss": val_loss,
            "resumed_from": start if found is not None else None}


def _writer(epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    def write(folder: Path) -> None:
        torch.save({"epoch": epoch, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict()}, folder / STATE_FILE)

    return write
