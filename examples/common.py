"""What every example script shares: its command line, the run, and the closing lines it prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxnets.train import OptimConfig, TrainConfig, fit

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def default_data(folder: str, tfds_name: str) -> str:
    """The developers' copy of the data when it is there, else the TFDS dataset (prepare it once)."""
    local = SHARED / folder
    return str(local) if local.is_dir() else f"tfds:{tfds_name}"


def parser(description: str, data: str, size: int, epochs: int, out: str, batch: int = 32) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=data, help="folder, digits, or tfds:NAME")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out)
    p.add_argument("--quiet", action="store_true")
    return p


def run(args, model: str, optim: OptimConfig, **config) -> float:
    """Train with an 80/10/10 split, print test accuracy and the best checkpoint, return test accuracy."""
    result = fit(TrainConfig(model=model, data=args.data, size=args.size, epochs=args.epochs,
                             batch_size=args.batch_size, seed=args.seed, out=args.out, optim=optim,
                             val_split=0.1, test_split=0.1, quiet=args.quiet, overwrite=True, **config))
    accuracy = result.metrics.get("test", {}).get("accuracy", float("nan"))
    best = max(h["val_accuracy"] for h in result.history)
    seconds = sum(h["seconds"] for h in result.history)
    print(f"{model}: best val accuracy {best:.4f} (epoch {result.best_epoch}), test accuracy {accuracy:.4f}, "
          f"train time {seconds:.0f}s; best checkpoint: {result.out / 'checkpoints'}", file=sys.stdout)
    return accuracy
