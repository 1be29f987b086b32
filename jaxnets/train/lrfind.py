"""The learning-rate range test (Smith, 2017; fastai's lr_find): train from the initial weights while the
learning rate grows exponentially from `start` to `end`, one step each, and watch the loss.

The loss is smoothed with a bias-corrected exponential average (β = 0.98, as fastai does) and the test stops
once it exceeds four times its best. The suggestion is where the smoothed loss falls fastest against log(lr)
— the steepest descent before the minimum: large enough to learn fast, well below where training diverges.
Nothing is written to the run directory; the model is the one `TrainConfig` describes, with its optimizer,
augmentation and loss, so the suggestion is for that exact run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.dataset import Splits
from .config import TrainConfig

__all__ = ["LRFindResult", "lr_find", "plot_png", "steepest"]


@dataclass
class LRFindResult:
    lrs: np.ndarray  # the learning rate of each step
    losses: np.ndarray  # the mean training loss of each step
    smoothed: np.ndarray  # bias-corrected exponential average of `losses`
    suggestion: float
    index: int  # the step of the suggestion


def _smooth(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    out, average = np.empty_like(losses), 0.0
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out[i] = average / (1 - beta ** (i + 1))
    return out


def steepest(lrs: np.ndarray, smoothed: np.ndarray) -> int:
    """The step where the smoothed loss falls fastest per unit of log(lr), looked for before its minimum (the
    first tenth left out: the average is still settling there)."""
    end = int(np.argmin(smoothed)) + 1
    start = min(len(lrs) // 10, max(end - 2, 0))
    if end - start < 3:
        return max(end - 1, 0)
    slope = np.gradient(smoothed[start:end], np.log(lrs[start:end]))
    return start + int(np.argmin(slope))


def lr_find(cfg: TrainConfig, splits: Splits | None = None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, diverge: float = 4.0) -> LRFindResult:
    """Run the range test for the run `cfg` describes (see the module docstring)."""
    import jax

    from .optim import _single_optimizer
    from .prepare import prepare
    from .state import create_state
    from .steps import make_train_step

    if not (0 < start < end) or steps < 10:
        raise ValueError(f"the range test needs 0 < start < end and at least 10 steps, got {start}, {end}, {steps}")
    if cfg.pretrained or cfg.accumulate > 1:
        raise ValueError("lr-find runs from the initial weights with one update per batch: drop --pretrained and "
                         "--accumulate (a fine-tune's recipe already sets its rates)")
    prep = prepare(cfg, splits, quiet=True)
    lrs = start * (end / start) ** (np.arange(steps) / (steps - 1))
    schedule = lambda count: start * (end / start) ** (count / (steps - 1))  # noqa: E731
    tx, _ = _single_optimizer(cfg.optim, prep.train_loader.steps_per_epoch, cfg.epochs, schedule)
    model, state = create_state(cfg.model, prep.card.num_outputs, dict(prep.card.model_options),
                                prep.card.input_shape, tx, cfg.seed, prep.train_loader.mesh)
    step = make_train_step(model, tx, prep.step_config)
    losses: list[float] = []
    epoch, best = 0, np.inf
    while len(losses) < steps:
        for batch in prep.train_loader.epoch(epoch):
            state, sums = step(state, batch)
            sums = jax.device_get(sums)
            losses.append(float(sums["loss_sum"]) / max(float(sums["count"]), 1.0))
            smoothed = _smooth(np.asarray(losses))[-1]
            best = min(best, smoothed)
            if len(losses) >= steps or not np.isfinite(smoothed) or smoothed > diverge * best:
                break
        else:
            epoch += 1
            continue
        break
    raw = np.asarray(losses)
    smoothed = _smooth(np.where(np.isfinite(raw), raw, np.nan_to_num(raw, nan=1e30, posinf=1e30)))
    index = steepest(lrs[:len(raw)], smoothed)
    lowest = int(np.argmin(smoothed))
    if len(raw) < 10 or lowest == 0 or smoothed[lowest] >= smoothed[0] * 0.99:
        raise ValueError(f"the loss never fell over lr {start:g} … {float(lrs[len(raw) - 1]):g} ({len(raw)} steps, "
                         f"first {raw[0]:.4g}, lowest {smoothed[lowest]:.4g}): no suggestion; try a lower --start, a "
                         "higher --end or more --steps")
    return LRFindResult(lrs[:len(raw)], raw, smoothed, float(lrs[index]), index)


def plot_png(result: LRFindResult, title: str = "") -> bytes:
    """Smoothed loss against learning rate (log scale), the suggestion marked."""
    from ..report.figures import figure_png, pyplot

    fig, ax = pyplot().subplots(figsize=(6, 3.6), dpi=90)
    shown = result.smoothed < 4 * np.nanmin(result.smoothed) + 1e-12
    ax.plot(result.lrs[shown], result.smoothed[shown], label="smoothed loss")
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggestion {result.suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)
