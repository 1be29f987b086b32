"""Experiment 6 — VGG-16 from scratch on cat vs dog, Adam 1e-4, with or without the classic augmentation.
224×224 is the paper's size; on a 2-core CPU use 64 or 96 and a few epochs."""

from common import default_data, parser, run

from jaxnets.train import OptimConfig

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=64, epochs=5, out="runs/vgg16")
    p.add_argument("--augment", default="classic", choices=("none", "classic"))
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-norm", action="store_true", help="vgg16_bn")
    args = p.parse_args()
    run(args, "vgg16_bn" if args.batch_norm else "vgg16", OptimConfig("adam", args.lr), augment=args.augment)
