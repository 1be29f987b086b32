"""The `jaxnets` command: train | evaluate | predict | lr-find | convert | export | package | serve | bench."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from .options import positive_int, which

EXIT_USAGE, EXIT_DIVERGED, EXIT_PEER_LOST, EXIT_INTERRUPTED = 2, 3, 4, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a command-line mistake in one line (no usage block) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _add_train(sub) -> None:
    from .options import add_config_arguments
    from .train.config import FINETUNE_RECIPE, TrainConfig

    settings = {**FINETUNE_RECIPE, **FINETUNE_RECIPE["optim"]}
    recipe = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if k != "optim")
    from .train.recipes import describe_recipes

    p = sub.add_parser("train", help="train a model; keeps the best and latest checkpoints",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a registered model on a dataset. Example: "
                                   "jaxnets train --model lenet5 --data digits --out runs/digits.\n"
                                   "The options not given come from the model family's recipe (the defaults "
                                   "shown below each option are the bare ones):\n" + describe_recipes() + "\n"
                                   "With --pretrained, they come from the fine-tuning recipe instead: "
                                   f"{recipe}, --freeze-epochs 1, --backbone-lr-mult 0.1.")
    add_config_arguments(p, TrainConfig)
    group = p.add_argument_group("several processes (jax.distributed; without these, JAX's own cluster detection: "
                                 "Slurm, Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address, the same for all")
    group.add_argument("--num-processes", type=positive_int, default=None, help="how many processes train together")
    group.add_argument("--process-id", type=int, default=None, help="this process's number, 0 … N-1")
    p.set_defaults(func=_train)


def _add_lr_find(sub) -> None:
    from .options import add_config_arguments
    from .train.config import TrainConfig

    p = sub.add_parser("lr-find", help="the learning-rate range test: loss against lr, and a suggested lr",
                       description="Trains from the initial weights for --steps steps while the learning rate grows "
                                   "exponentially from --start to --end, and suggests the lr where the smoothed "
                                   "loss falls fastest. Takes the options of `train` (the same recipe defaults); "
                                   "writes nothing but the --plot file. Example: jaxnets lr-find --model resnet18 "
                                   "--data photos/ --plot lr.png")
    add_config_arguments(p, TrainConfig)
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate")
    p.add_argument("--steps", type=positive_int, default=100, help="steps of the test (one lr each)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write the curve here (never over a file)")
    p.set_defaults(func=_lr_find)


def _lr_find(args) -> int:
    from .train.lrfind import lr_find, plot_png

    if args.plot is not None:
        _refuse_existing(Path(args.plot), "--plot")
    if getattr(args, "resume", False) or getattr(args, "overwrite", False):
        raise ValueError("lr-find writes no run: --resume and --overwrite do not apply (give the options instead)")
    cfg, _ = _train_config(args)
    result = lr_find(cfg.validate(), start=args.start, end=args.end, steps=args.steps)
    if args.plot is not None:
        with open(args.plot, "xb") as f:
            f.write(plot_png(result, f"{cfg.model} on {cfg.data}, {cfg.optim.optimizer}"))
    print(f"suggested lr {result.suggestion:.3g} (steepest descent of the smoothed loss; {len(result.losses)} steps, "
          f"lowest loss {float(result.smoothed.min()):.4f} at lr {float(result.lrs[result.smoothed.argmin()]):.3g})")
    return 0


def _add_convert(sub) -> None:
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
    p.add_argument("--size", type=positive_int, default=224, help="input height = width (default 224)")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from .models import list_models
    from .pretrained import convert

    if args.model is not None and args.model not in list_models():
        raise ValueError(f"unknown model {args.model!r}; choose one of: {', '.join(list_models())}")
    classes = None
    if args.classes is not None:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    out = convert(args.source, args.model, args.out, classes, args.size)
    print(f"checkpoint {out / 'checkpoints'}: {json.loads((out / 'convert.json').read_text())['report'][0]}")
    return 0


def _model_options(given: dict) -> dict:
    """Model options as create_model takes them: one activation is a name, several are a list."""
    opts = dict(given)
    if isinstance(opts.get("activation"), list) and len(opts["activation"]) == 1:
        opts["activation"] = opts["activation"][0]
    return opts


def _train_config(args):
    """(config, announce): the typed options over the defaults, or, with --resume, over the saved run's config;
    `announce` prints what changed once the resume is accepted."""
    from .options import given
    from .train.config import TrainConfig, changes, from_options, saved_config

    top, nested, model = given(args, TrainConfig)
    if "hidden_sizes" in model and not model["hidden_sizes"]:
        raise ValueError("--hidden-sizes takes comma-separated whole numbers such as 256,64")
    saved = saved_config(top.get("out", TrainConfig.out)) if top.get("resume") else None
    if saved is not None:  # how the saved run was started (--overwrite, --quiet) is not part of what it is
        saved = dataclasses.replace(saved, resume=False, overwrite=False, quiet=False)
    # --pretrained alone brings the fine-tuning recipe; otherwise the model family's recipe fills the gaps
    if saved is not None:
        base = saved
    elif top.get("pretrained"):
        base = TrainConfig.finetuning()
    else:
        base = TrainConfig.recommended(top.get("model", TrainConfig.model),
                                       optim={k: v for k, v in nested.get("optim", {}).items()
                                              if k in ("optimizer", "weight_decay")})
    cfg = from_options(top, nested.get("optim", {}), _model_options(model), base=base)
    diff = changes(saved, cfg) if saved is not None else []
    note = f"resuming {cfg.out}" + (f" with {'; '.join(diff)}" if diff else " with its saved options")
    return cfg, (lambda: print(note, file=sys.stderr)) if saved is not None else None


def _resume_command(argv: list[str]) -> str:
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return "jaxnets " + " ".join(shlex.quote(a) for a in [*kept, "--resume"])


def _train(args) -> int:
    from .runtime.sharding import check_same_everywhere, initialize_distributed
    from .train import NonFiniteLossError, TrainingInterrupted, fit

    cfg, announce = _train_config(args)
    cfg.validate()
    several = initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if several:
        check_same_everywhere("their options", {k: v for k, v in cfg.to_dict().items() if k != "quiet"})
        if _process_index():
            announce = None  # process 0 speaks for the run
    try:
        result = fit(cfg, on_start=announce)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as e:
        if several:  # the others wait in a collective for this one: leaving at once tells them (exit 4 there)
            print(f"{e}. Resume by starting every process again with --resume", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        print(f"{e}. Resume with: {_resume_command(args.argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # with several processes no error may reach JAX's shutdown barrier (it aborts there)
        if not several:
            raise
        _stop_after_error(e)
    test = result.metrics.get("test", {})
    print(f"best epoch {result.best_epoch}; test accuracy {test.get('accuracy', float('nan')):.4f}; "
          f"checkpoint {result.out / 'checkpoints'}")
    return 0


def _process_index() -> int:
    import jax

    return jax.process_index()


def _others_alive(timeout_s: float = 10.0) -> bool:
    """Whether every process reaches this point within `timeout_s`: the same error everywhere (a mistake all of
    them found), rather than a process that is gone."""
    from jax._src import distributed

    try:
        distributed.global_state.client.wait_at_barrier("jaxnets-after-error", int(timeout_s * 1000))
        return True
    except Exception:  # the barrier fails or times out when a process is gone
        return False


def _stop_after_error(error: BaseException) -> None:
    """End a multi-process run that failed, in one line and without JAX's shutdown (which waits for a lost
    process at a barrier and then aborts with pages of log): exit 4 when another process is gone, else exit 2
    for a mistake every process found (1 for anything else)."""
    if not _others_alive():
        _peer_lost(error)
    print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_USAGE if isinstance(error, (ValueError, OSError)) else 1)


def _peer_lost(error: BaseException) -> None:
    """One line, then exit at once: JAX's shutdown would wait for the lost process at a barrier and then abort
    with pages of coordination-service log. The checkpoints are whole (each step is saved before the next)."""
    import re

    import jax

    reason = re.sub(r"(Error dispatching computation: )+", "", _one_line(error))[:300]
    print(f"error: process {jax.process_index()} of {jax.process_count()} lost the others of this run ({reason}); "
          "its checkpoints are kept: restart every process with --resume", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate the best checkpoint on labelled data",
                       description="Evaluates on the test split of --data, or on all of it when --data is a plain "
                                   "class folder (new photos). Classes are matched by name.")
    p.add_argument("--checkpoint", required=True, help="run directory or its checkpoints/ folder")
    p.add_argument("--data", required=True, help="same forms as for train")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--which", default="best", type=which, help="best, latest, or an epoch number")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write report.html (curves, confusion matrix, per-class scores, most-confused pairs, "
                        "top losses with Grad-CAM) and its figures into DIR; never over existing files")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from .inference.evaluate import evaluate_checkpoint
    from .inference.metrics import format_report

    test = evaluate_checkpoint(args.checkpoint, args.data, args.batch_size, args.which, args.data_dir, args.report)
    # per_class is keyed in the checkpoint's class order: no need to load the checkpoint a second time
    print(json.dumps(test) if args.json else format_report(test, list(test["per_class"])))
    return 0


def _add_predict(sub) -> None:
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
    from .data.preprocess import ImageError
    from .inference.predictor import NonFiniteOutputError, Predictor

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
    from .inference.folder import expand_paths

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

    from .inference.folder import predict_files, write_csv

    if args.explain is not None:
        raise ValueError("--explain and --csv do not go together: explain a few images, score many")
    from .inference.predictor import NonFiniteOutputError

    skipped: list[tuple[str, str]] = []
    _refuse_existing(Path(args.csv), "--csv")
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


def _refuse_existing(path, option: str) -> None:
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} exists: jaxnets does not overwrite it; choose another {option}")


def _add_export(sub) -> None:
    from .inference.export import DEFAULT_PLATFORMS, FORMATS

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
    from .inference.export import export_bytes, metadata
    from .inference.predictor import Predictor

    out = Path(args.out)
    sidecar = out.with_name(out.name + ".json")
    for path in (out, sidecar):
        _refuse_existing(path, "--out")
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

    from .report.overlay import overlay_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, npy = out / f"{stem}_cam.png", out / f"{stem}_cam.npy"
    for target in (png, npy):
        _refuse_existing(target, "--explain folder")
    pixels = predictor.pixels([path])
    classes = None if class_name is None else [predictor.classes.index(class_name)]
    maps, _ = predictor.explain_pixels(pixels, classes, stage)
    buffer = io.BytesIO()
    np.save(buffer, maps[0])
    npy.write_bytes(buffer.getvalue())
    png.write_bytes(overlay_png(pixels[0], maps[0]))
    return str(png)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's informational lines are not for users
    parser = _Parser(prog="jaxnets", description="Classic image classifiers in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_lr_find(sub)
    _add_convert(sub)
    _add_export(sub)
    from . import bench, service_cli  # their heavy imports happen inside the commands, not here

    service_cli.add_parser(sub)
    bench.add_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # a mistake in what was asked for: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message (a file error with its path), never a trace."""
    if isinstance(e, OSError) and e.filename and str(e.filename) not in str(e.strerror or ""):
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
