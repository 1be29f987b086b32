"""Experiment 8 — transfer learning: start from ImageNet weights instead of from scratch.

The course measures a pretrained AlexNet as the upper bound of its cat/dog task; ResNet-18 fine-tuned the same
way is the modern version. `--pretrained` brings the fine-tuning recipe (jaxnets train --help): one epoch with
only the new 2-class head training on the frozen backbone (BatchNorm statistics kept), then the whole network at
a tenth of the head's learning rate, AdamW with a warm-up and a cosine decay, mirrored crops.

The weights default to torchvision's (downloaded once into ~/.cache/jaxnets and checked against their published
hash: this needs internet the first time); `--weights` takes a .pth/.safetensors file, a URL, a timm name
(timm:resnet18.a1_in1k) or another jaxnets run instead.

    python examples/finetune.py --model alexnet     # the course's pretrained-AlexNet experiment
    python examples/finetune.py --model resnet18    # ResNet-18 fine-tuned
"""

import sys

from common import default_data, parser

from jaxnets.train import TrainConfig, fit

if __name__ == "__main__":
    p = parser(__doc__, default_data("cats_dogs", "cats_vs_dogs"), size=224, epochs=6, out="runs/finetune")
    p.add_argument("--model", default="resnet18", choices=("alexnet", "vgg16", "vgg16_bn", "resnet18", "resnet50"))
    p.add_argument("--weights", default=None, help="default: torchvision:MODEL (ImageNet, downloaded once)")
    p.add_argument("--freeze-epochs", type=int, default=1, help="epochs training only the new head")
    args = p.parse_args()
    cfg = TrainConfig.finetuning(model=args.model, data=args.data, size=args.size, epochs=args.epochs,
                                 batch_size=args.batch_size, seed=args.seed, out=args.out, quiet=args.quiet,
                                 pretrained=args.weights or f"torchvision:{args.model}",
                                 freeze_epochs=args.freeze_epochs, val_split=0.1, test_split=0.1, overwrite=True)
    result = fit(cfg)
    accuracy = result.metrics.get("test", {}).get("accuracy", float("nan"))
    best = max(h["val_accuracy"] for h in result.history)
    print(f"{args.model} fine-tuned from {cfg.pretrained}: best val accuracy {best:.4f} (epoch {result.best_epoch}), "
          f"test accuracy {accuracy:.4f}; best checkpoint: {result.out / 'checkpoints'}", file=sys.stdout)
