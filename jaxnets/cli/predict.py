"""`jaxnets predict`: image files and folders through a checkpoint's Predictor: lines, JSON lines or a CSV file,
and with --explain where the model looked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..options import positive_int, which
from .common import refuse_existing

__all__ = ["add_predict"]


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--which", default="best", type=which, help="best, latest, or an epoch number")
    p.add_argument("--top-k", type=positive_int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("--explain", default=None, metavar="OUT_DIR",
                   help="also write where the model looks: <stem>_cam.png (over the image) and <stem>_cam.npy (the "
                        "map at the model's input size): Grad-CAM for CNNs, gradient × input for MLPs")
    p.add_argument("--class", dest="explain_class", default=None, metavar="NAME",
                   help="with --explain: explain this class instead of the predicted one")
    p.add_argument("--cam-stage", type=positive_int, default=None, metavar="N",
                   help="with --explain: the convolutional stage Grad-CAM draws from (1 = nearest the pixels; default: "
                        "the deepest with at least 7x7 positions, said on stderr)")
    p.add_argument("--csv", default=None, metavar="OUT.csv",
                   help="write one row per readable image (path, label, the probability of each class) to a new "
                        "file instead of printing; folders are walked recursively, with a progress bar")
    p.add_argument("--tta", default=None, choices=["flip"],
                   help="average over the horizontal flip (off by default: wrong for digits and text)")
    p.add_argument("images", nargs="+", help="image files or folders (walked recursively)")
    p.set_defaults(func=_predict)


def _predict(args) -> int:
    from ..data.preprocess import ImageError
    from ..inference.predictor import NonFiniteOutputError, Predictor

    predictor = Predictor.from_checkpoint(args.checkpoint, args.which)
    if args.explain_class is not None and args.explain_class not in predictor.classes:
        raise ValueError(f"--class {args.explain_class!r} is not one of the model's classes: "
                         f"{', '.join(predictor.classes)}")
    if args.explain_class is not None and args.explain is None:
        raise ValueError("--class chooses what --explain explains: pass --explain OUT_DIR too")
    if args.explain is not None:
        _say_cam_stage(predictor, args.cam_stage)
    elif args.cam_stage is not None:
        raise ValueError("--cam-stage chooses where --explain looks: pass --explain OUT_DIR too")
    from ..inference.folder import expand_paths

    files = [str(p) for p in expand_paths(args.images)]
    if not files:
        raise ValueError(f"no files in {', '.join(args.images)}")
    if args.csv is not None:
        return _predict_csv(predictor, files, args)
    status = 0
    width = max((len(p) for p in files), default=0)
    stems: dict[str, int] = {}
    for path in files:
        try:
            result = predictor.predict([path], top_k=args.top_k, tta=args.tta)[0]
        except NonFiniteOutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (ImageError, OSError) as e:
            status = 1
            print(json.dumps({"image": path, "error": str(e)}) if args.json else f"{path:<{width}}  error: {e}")
            continue
        if args.explain is not None:
            stem = Path(path).stem
            stems[stem] = stems.get(stem, 0) + 1
            name = stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"  # a/1.png and b/1.png: 1, 1-2
            result["explanation"] = _explain_one(predictor, path, args.explain, args.explain_class, name,
                                                 args.cam_stage)
        if args.json:
            print(json.dumps({"image": path, **result}))
        else:
            top = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top_k"])
            print(f"{path:<{width}}  {result['label']:<10}  {top}")
    return status


def _predict_csv(predictor, files: list[str], args) -> int:
    """Rows into a new CSV file (never over an existing one); the unreadable files listed after, exit 1 if any."""
    from tqdm.auto import tqdm

    from ..inference.folder import predict_files, write_csv

    if args.explain is not None:
        raise ValueError("--explain and --csv do not go together: explain a few images, score many")
    from ..inference.predictor import NonFiniteOutputError

    skipped: list[tuple[str, str]] = []
    refuse_existing(Path(args.csv), "--csv")
    with open(args.csv, "x", newline="", encoding="utf-8") as out:
        bar = tqdm(map(Path, files), total=len(files), unit="file", disable=None, file=sys.stderr)
        try:
            rows = write_csv(out, predictor, predict_files(predictor, bar, args.tta, skipped))
        except NonFiniteOutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"{rows} image(s) scored into {args.csv}" + (f"; {len(skipped)} skipped:" if skipped else ""),
          file=sys.stderr)
    for path, reason in skipped:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1 if skipped else 0


def _say_cam_stage(predictor, stage: int | None) -> None:
    """One line on stderr naming what the maps are drawn from; a stage the model lacks is refused."""
    stages = predictor.cam_stages
    if not stages:
        if stage is not None:
            raise ValueError(f"--cam-stage: {predictor.card.model} has no convolutional stage (its maps are "
                             "gradient x input)")
        return
    offered = ", ".join(f"{k} ({h}x{w})" for k, (h, w) in sorted(stages.items()))
    if stage is not None and stage not in stages:
        raise ValueError(f"--cam-stage {stage}: {predictor.card.model} has stages {offered}")
    chosen = predictor.cam_stage if stage is None else stage
    h, w = stages[chosen]
    print(f"Grad-CAM from stage {chosen} ({h}x{w} positions; stages: {offered})", file=sys.stderr)


def _explain_one(predictor, path: str, out_dir: str, class_name: str | None, stem: str,
                 stage: int | None = None) -> str:
    """Write <stem>_cam.png and <stem>_cam.npy for one image into out_dir (never over an existing file)."""
    import io

    import numpy as np

    from ..report.overlay import overlay_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, npy = out / f"{stem}_cam.png", out / f"{stem}_cam.npy"
    for target in (png, npy):
        refuse_existing(target, "--explain folder")
    pixels = predictor.pixels([path])
    classes = None if class_name is None else [predictor.classes.index(class_name)]
    maps, _ = predictor.explain_pixels(pixels, classes, stage)
    buffer = io.BytesIO()
    np.save(buffer, maps[0])
    npy.write_bytes(buffer.getvalue())
    png.write_bytes(overlay_png(pixels[0], maps[0]))
    return str(png)
