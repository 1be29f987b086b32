"""`make demo`: the whole product on the embedded default, in about a minute on two cores.

Trains LeNet-5 on the scikit-learn digits, packages the best checkpoint into a private BentoML store,
starts the real service on a free loopback port, sends real digit images over HTTP, prints the answers
beside the true labels, and stops the server.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from .data import load_dataset
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

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"3/4 starting the service on {url}", flush=True)
    log = open(work / "server.log", "w")  # noqa: SIM115 (the server outlives this block)
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "jaxnets.serving.service:JaxnetsClassifier",
                               "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "JAXNETS_MODEL_TAG": tag}, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None or time.time() > deadline:
                print((work / "server.log").read_text()[-3000:], file=sys.stderr)
                print("the service did not start", file=sys.stderr)
                return 1
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        test = load_dataset("digits").test
        print("4/4 asking the service about 12 digits it has never seen:\n")
        print("  true  predicted  probability")
        right = 0
        for i in np.linspace(0, len(test) - 1, 12).astype(int):
            png = io.BytesIO()
            Image.fromarray(test.sources[i]).save(png, format="PNG")
            answer = _post_image(f"{url}/predict", png.getvalue())
            right += answer["label"] == test.classes[test.labels[i]]
            print(f"  {test.classes[test.labels[i]]:>4}  {answer['label']:>9}  {answer['top_k'][0]['probability']:.3f}")
        print(f"\n{right}/12 right. Try it yourself while it runs: curl -F image=@digit.png {url}/predict")
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
        print("service stopped")


if __name__ == "__main__":
    sys.exit(main())
