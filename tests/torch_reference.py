"""torchvision's model definitions for the parity tests, imported beside the CPU wheel of torch.

PyPI's torchvision 0.28.0 (the match of torch 2.13.0) is built against the CUDA torch: its C++ operators
(nms, roi_align, deform_conv: detection only) do not load beside the CPU wheel used here, and `import
torchvision` then fails while registering their meta kernels in `torchvision._meta_registrations`
("operator torchvision::nms does not exist"). The classification models are pure Python (conv, BatchNorm,
linear, pooling) and never call those operators, so the one module that registers them is replaced by an
empty one before the import — nothing else is patched, and any use of a detection operator would still fail
loudly. Installing the CUDA build instead would cost gigabytes for nothing.
"""

from __future__ import annotations

import sys
import types

import pytest


def torchvision():
    """The torchvision package (its models), or skip when torch is not installed (it is a dev dependency)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision as tv

    return tv


def randomize_batchnorm(model, seed: int = 0, size: int = 64) -> None:
    """Non-trivial BatchNorm weights and running statistics (a fresh model has 1, 0, 0, 1: a weak test). The
    statistics are those of random images through the randomised layers (the cumulative average of one train-mode
    pass), so that activations stay in range through fifty layers, as in a trained network."""
    import torch

    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of the pass below
        model.train()
        model(torch.randn(4, 3, size, size, generator=g))
        for m in norms:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.05)  # away from any batch's exact mean
    model.eval()
