"""`make demo`: the whole product on the embedded default, in about a minute on two cores.

Trains LeNet-5 on the scikit-learn digits, packages the best checkpoint into a private BentoML store,
starts the real service on a free loopback port, sends real digit images over HTTP, prints the answers
beside the true labels, and stops the server.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


def _post_image(url: str, png: bytes) -> dict:
    """A multipart upload with the standard library only: the service takes one file in the field `image`."""
    import json

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"digit.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> int:
    from .serving.local import running_server
    from .serving.package import package_checkpoint
    from .train import OptimConfig, TrainConfig, fit

    work = Path(os.environ.get("JAXNETS_DEMO_DIR") or tempfile.mkdtemp(prefix="jaxnets-demo-"))
    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    print(f"1/4 training LeNet-5 on the scikit-learn digits → {work / 'run'}", flush=True)
    t0 = time.perf_counter()
    result = fit(TrainConfig(model="lenet5", data="digits", epochs=15, batch_size=32, augment="light",
                             optim=OptimConfig(lr=2e-3, schedule="cosine"), out=str(work / "run"), overwrite=True))
    print(f"    test accuracy {result.metrics['test']['accuracy']:.4f} in {time.perf_counter() - t0:.0f}s")

    tag = package_checkpoint(result.out)
    print(f"2/4 packaged the best checkpoint (epoch {result.best_epoch}) as {tag}")

    print("3/4 starting the service on a free loopback port", flush=True)
    try:
        with running_server(work / "server.log", env={"JAXNETS_MODEL_TAG": tag}, timeout=180) as url:
            _ask(url)
    except RuntimeError as e:
        print(f"the service did not start: {e}", file=sys.stderr)
        return 1
    print("service stopped")
    return 0


def _ask(url: str) -> None:
    """Send twelve unseen test digits as PNG files and print the answers beside the true labels."""
    from .data import load_dataset

    test = load_dataset("digits").test
    print(f"4/4 asking the service at {url} about 12 digits it has never seen:\n")
    print("  true  predicted  probability")
    right = 0
    for i in np.linspace(0, len(test) - 1, 12).astype(int):
        png = io.BytesIO()
        Image.fromarray(test.sources[i]).save(png, format="PNG")
        answer = _post_image(f"{url}/predict", png.getvalue())
        truth = test.classes[test.labels[i]]
        right += answer["label"] == truth
        print(f"  {truth:>4}  {answer['label']:>9}  {answer['top_k'][0]['probability']:.3f}")
    print(f"\n{right}/12 right. While it runs: curl -F image=@digit.png {url}/predict")


if __name__ == "__main__":
    sys.exit(main())
