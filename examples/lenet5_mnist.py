"""Experiment 4 — LeNet-5 on MNIST: 28×28 padded to 32×32, Adam 1e-3, 10 epochs."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

if __name__ == "__main__":
    p = parser(__doc__, default_data("mnist", "mnist"), size=32, epochs=10, out="runs/lenet5_mnist", batch=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    args = p.parse_args()
    run(args, "lenet5", OptimConfig("adam", args.lr, schedule=args.schedule), resize="pad", channels=1)
