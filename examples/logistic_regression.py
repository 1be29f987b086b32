"""Experiment 1 — logistic regression on cat vs dog photos at 64×64×3: the single-neuron baseline."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=64, epochs=20, out="runs/logistic")
    p.add_argument("--lr", type=float, default=1e-4)
    args = p.parse_args()
    run(args, "logistic_regression", OptimConfig("adam", args.lr))
