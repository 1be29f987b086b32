"""Experiment 7 — ResNet-18 from scratch on cat vs dog, the same recipe (Adam, classic augmentation), with a
cosine schedule by default."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=96, epochs=15, out="runs/resnet18")
    p.add_argument("--augment", default="classic", choices=("none", "classic"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="cosine", choices=("constant", "cosine", "warmup_cosine"))
    args = p.parse_args()
    run(args, "resnet18", OptimConfig("adam", args.lr, schedule=args.schedule), augment=args.augment,
        model_options={"zero_init_residual": True})
