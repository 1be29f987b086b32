"""`jaxnets convert`: torchvision/timm weights (or a weights file) into an ordinary jaxnets checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ..options import positive_int

__all__ = ["add_convert"]


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="turn torchvision/timm weights into a jaxnets checkpoint",
                       description="Writes an ordinary jaxnets checkpoint (model card with the classes and the "
                                   "evaluation preprocessing) that predict, evaluate, package and serve use as is. "
                                   "Example: jaxnets convert --from torchvision:resnet18 --out models/resnet18")
    p.add_argument("--from", dest="source", required=True,
                   help="a .pth/.pt/.safetensors file, a URL (#sha256=… unless torchvision names it), "
                        "torchvision:MODEL[.WEIGHTS] or timm:MODEL.TAG")
    p.add_argument("--model", default=None, help="the jaxnets model the weights are for (a catalogue name says it)")
    p.add_argument("--out", required=True, help="a new or empty folder for the checkpoint")
    p.add_argument("--classes", default=None, help="a file with one class name per line (default: ImageNet's "
                                                   "names for a 1,000-way head, else class_0, class_1, …)")
    p.add_argument("--size", type=positive_int, default=None, help="input height = width (default: the model's, e.g. "
                                                                    "224; EfficientNet-Lite1 240)")
    p.add_argument("--style", choices=("tf", "pytorch"), default=None,
                   help="EfficientNet-Lite only: how the weights compute — tf (TF 'SAME' padding, BN eps 1e-3, [-1, 1] "
                        "pixels: the default, and what TF-ported weights such as tf_efficientnet_lite* need) or "
                        "pytorch (symmetric padding, eps 1e-5, ImageNet mean/std: timm's efficientnet_lite0)")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from ..models import list_models
    from ..pretrained import convert

    if args.model is not None and args.model not in list_models():
        raise ValueError(f"unknown model {args.model!r}; choose one of: {', '.join(list_models())}")
    classes = None
    if args.classes is not None:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    if args.style is not None and not (args.model or "").startswith("efficientnet_lite"):
        raise ValueError("--style is an EfficientNet-Lite option: pass --model efficientnet_lite0 … _lite4")
    options = {"style": args.style} if args.style else None
    out = convert(args.source, args.model, args.out, classes, args.size, options)
    print(f"checkpoint {out / 'checkpoints'}: {json.loads((out / 'convert.json').read_text())['report'][0]}")
    return 0
