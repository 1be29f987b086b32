"""Experiment 3 — deep MLPs on cat vs dog: (20, 10, 5) ReLU + He init, (256, 64) with Adam 1e-3,
(5, 5, 3) at 128×128, (30, 30, 20, 20); and the init lesson: `--init small` (N(0, 0.01)) stays at loss ≈ 0.693."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

VARIANTS = {"20-10-5": (20, 10, 5), "256-64": (256, 64), "5-5-3": (5, 5, 3), "30-30-20-20": (30, 30, 20, 20)}

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=64, epochs=20, out="runs/deep_mlp")
    p.add_argument("--hidden", default="256-64", choices=sorted(VARIANTS))
    p.add_argument("--init", default="he", choices=("he", "xavier", "small"))
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    run(args, "mlp", OptimConfig(args.optimizer, args.lr),
        model_options={"hidden_sizes": VARIANTS[args.hidden], "init": args.init})
