#!/usr/bin/env bash
# EfficientNet-Lite0 against the eager-PyTorch peer, alternated, two rounds (BENCHMARKS.md). Run from the repo root.
set -u
J=".venv/bin/jaxnets bench"
T="../.torchpeer/bin/python ../shared/bench/torch_peer.py --model efficientnet_lite0"
for round in 1 2; do
  for spec in "train 224 6" "train 128 10" "predict 224 10"; do
    set -- $spec
    echo "== round $round $1 $2 jaxnets"; $J $1 --model efficientnet_lite0 --batch 32 --size $2 --steps $3 --warmup 2 --json | tail -1
    echo "== round $round $1 $2 torch"; $T --batch 32 --size $2 --steps $3 --warmup 2 --mode $1 | tail -1
  done
done
