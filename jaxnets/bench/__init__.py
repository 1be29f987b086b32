"""`jaxnets bench`: throughput of the train/predict steps, the data pipeline, whole epochs and the service.

Synthetic step timings use one batch already on the device and block on the result, like the PyTorch peer
(the maintainers' `torch_peer.py`, run beside it by tools/bench_suite.py), so the two are comparable line by
line. One JSON line per run with --json.

Measurements live in steps.py (synthetic train/predict steps, profiles), pipeline.py (data, augmentation,
whole epochs) and serve.py (the service, from a client); command.py builds the `bench` sub-commands.
"""

from __future__ import annotations

from .command import add_parser
from .pipeline import bench_augment, bench_data, bench_epoch
from .serve import bench_serve
from .steps import (
    StepRunner,
    bench_profile,
    bench_step,
    device_name,
    enable_compilation_cache,
    forward_flops_per_image,
    machine,
    step_runner,
)

__all__ = ["StepRunner", "add_parser", "bench_augment", "bench_data", "bench_epoch", "bench_profile", "bench_serve",
           "bench_step", "device_name", "enable_compilation_cache", "forward_flops_per_image", "machine",
           "step_runner"]
