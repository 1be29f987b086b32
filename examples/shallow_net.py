"""Experiment 2 — one hidden layer of 4 ReLU units at 128×128×3, plain SGD lr 0.01 (try --epochs 50 too)."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=128, epochs=20, out="runs/shallow")
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args()
    run(args, "shallow_mlp", OptimConfig("sgd", args.lr), model_options={"hidden_sizes": (4,)})
