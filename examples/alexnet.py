"""Experiment 5 — AlexNet from scratch, Adam 1e-4: on MNIST (resized up, grey → 3 channels, `--mnist`) or
on cat vs dog, without and with the classic augmentation (`--augment classic`)."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=96, epochs=10, out="runs/alexnet")
    p.add_argument("--mnist", action="store_true", help="train on MNIST instead (default data: the MNIST folder)")
    p.add_argument("--augment", default="none", choices=("none", "classic"))
    p.add_argument("--lr", type=float, default=1e-4)
    args = p.parse_args()
    if args.mnist and args.data == p.get_default("data"):
        args.data = default_data("mnist", "mnist")
    run(args, "alexnet", OptimConfig("adam", args.lr), augment="none" if args.mnist else args.augment, channels=3)
