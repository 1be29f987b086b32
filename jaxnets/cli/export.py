"""`jaxnets export`: a checkpoint as one ONNX or StableHLO file, and its classes and preprocessing beside it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..options import which
from .common import refuse_existing

__all__ = ["add_export"]


def add_export(sub) -> None:
    from ..inference.export import DEFAULT_PLATFORMS, FORMATS

    p = sub.add_parser("export", help="write a checkpoint as one ONNX or StableHLO file",
                       description="The exported function takes uint8 NHWC pixels as the checkpoint's preprocessing "
                                   "makes them (any batch size) and returns class probabilities; the "
                                   "standardisation and the weights are inside. ONNX goes through jax2onnx "
                                   "(no TensorFlow); StableHLO is jax.export's serialized form, loaded with "
                                   "jax.export.deserialize.")
    p.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ folder or a convert folder")
    p.add_argument("--which", default="best", type=which, help="best, latest, or an epoch number")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="the file to write (never over an existing one); beside it, "
                                                "OUT.json holds the classes and the preprocessing")
    p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                   help="StableHLO: the platforms to lower for, comma-separated (cpu, cuda, rocm, tpu)")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from ..inference.export import export_bytes, metadata
    from ..inference.predictor import Predictor

    out = Path(args.out)
    sidecar = out.with_name(out.name + ".json")
    for path in (out, sidecar):
        refuse_existing(path, "--out")
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    predictor = Predictor.from_checkpoint(args.checkpoint, args.which)
    data = export_bytes(predictor, args.format, platforms)
    info = metadata(predictor)
    with open(out, "xb") as f:
        f.write(data)
    with open(sidecar, "x", encoding="utf-8") as f:
        json.dump({**{k: json.loads(v) if k in ("classes", "preprocess") else v for k, v in info.items()},
                   "format": args.format, **({"platforms": platforms} if args.format == "stablehlo" else {})}, f,
                  indent=1)
    print(f"{args.format} written to {out} ({len(data):,} bytes): input {info['input']}, output {info['output']}; "
          f"classes and preprocessing in {sidecar}", file=sys.stderr)
    return 0
