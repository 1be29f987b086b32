#!/usr/bin/env bash
# Issue 33's targets against the eager-PyTorch peer and the course's MNIST loop: each pair jaxnets then torch,
# alternated, two rounds; take the best of each side (BENCHMARKS.md). Run from the repo root, on a quiet machine.
set -u
J=".venv/bin/jaxnets bench"
TP=${TORCH_PY:-../.torchpeer/bin/python}
T="$TP ../shared/bench/torch_peer.py --threads 2 --warmup 2"
for round in 1 2; do
  for spec in "resnet18 resnet18 train 32 128 3 6" "vgg16 vgg16 train 32 64 3 4" "lenet5 lenet5 train 64 32 1 400" \
              "shallow_mlp shallow predict 32 128 3 4000"; do
    set -- $spec
    echo "== round $round $1 $3 b$4 $5 jaxnets"
    $J $3 --model $1 --batch $4 --size $5 --channels $6 --steps $7 --warmup 3 --json | tail -1
    echo "== round $round $1 $3 b$4 $5 torch"
    $T --model $2 --mode $3 --batch $4 --size $5 --steps $7 | tail -1
  done
  echo "== round $round mnist epoch jaxnets"
  $J epoch --model lenet5 --data ../shared/data/mnist --resize pad --batch 64 --epochs 3 --json | tail -1
  echo "== round $round mnist epoch torch"
  $TP ../shared/bench/torch_mnist_epoch.py --data ../shared/data/mnist --epochs 1 | tail -1
done
