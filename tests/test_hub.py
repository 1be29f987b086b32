"""timm: names through huggingface_hub: a local hub on 127.0.0.1 as HF_ENDPOINT, the Hugging Face cache in HF_HOME,
the user's token sent, HF_HUB_OFFLINE served from the warm cache with no server, and a file that does not match the
SHA-256 the hub names it by refused. Each lookup runs in a fresh process, where huggingface_hub reads the
environment as a user's program would."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import HubFile, HubServer

pytest.importorskip("huggingface_hub")

REPO = "timm/resnet18.a1_in1k"
KEY = f"{REPO}/resolve/main/model.safetensors"
RESOLVE = ("import sys\nfrom jaxnets.pretrained.sources import resolve, WeightsError\n"
           "try:\n    print(resolve(sys.argv[1]).path)\nexcept WeightsError as e:\n"
           "    print(e, file=sys.stderr); sys.exit(2)\n")


@pytest.fixture
def hub():
    server = HubServer()
    yield server
    server.close()


def _resolve(source: str, tmp_path: Path, endpoint: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    clean.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
                 JAXNETS_CACHE=str(tmp_path / "jaxnets-cache"), **env)
    return subprocess.run([sys.executable, "-c", RESOLVE, source], capture_output=True, text=True, env=clean,
                          timeout=120)


def test_a_timm_name_is_fetched_into_the_hugging_face_cache_with_the_token_then_served_offline(hub, tmp_path):
    body = b"safetensors bytes " * 4096
    hub.files[KEY] = HubFile(body)
    first = _resolve("timm:resnet18.a1_in1k", tmp_path, hub.url, HF_TOKEN="hf_testtoken")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.read_bytes() == body
    # the Hugging Face cache's own layout, under HF_HOME: blobs named by the SHA-256, a snapshot per commit
    assert path.resolve() == tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "blobs" / \
        hashlib.sha256(body).hexdigest()
    assert path.parent.name == HubFile.commit and not (tmp_path / "jaxnets-cache").exists()
    paths = {(m, p.split("?")[0]) for m, p, _ in hub.requests}
    assert ("GET", f"/{KEY}") in paths
    assert {auth for *_, auth in hub.requests} == {"Bearer hf_testtoken"}  # the user's token, on every request
    hub.close()  # no server any more: the warm cache answers in offline mode
    offline = _resolve("timm:resnet18.a1_in1k", tmp_path, hub.url, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == path


def test_offline_with_a_cold_cache_and_a_missing_repository_are_one_line_errors(hub, tmp_path):
    cold = _resolve("timm:resnet18.a1_in1k", tmp_path, hub.url, HF_HUB_OFFLINE="1")
    assert cold.returncode == 2 and "not in the Hugging Face cache" in cold.stderr
    assert len(cold.stderr.strip().splitlines()) == 1 and hub.requests == []
    missing = _resolve("timm:resnet34.a1_in1k", tmp_path, hub.url)
    assert missing.returncode == 2 and "timm/resnet34.a1_in1k" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_hub_file_that_does_not_match_its_sha256_is_refused(hub, tmp_path):
    body = b"substituted " * 1000
    hub.files[KEY] = HubFile(body, sha256="2" * 64)  # the hub names it by another hash than its bytes have
    out = _resolve("timm:resnet18.a1_in1k", tmp_path, hub.url)
    assert out.returncode == 2 and "not " + "2" * 64 in out.stderr and "damaged or substituted" in out.stderr
    hub.files[KEY] = HubFile(body)  # a hub URL with #sha256= is checked against that hash too
    url = f"https://huggingface.co/{KEY}#sha256={'3' * 64}"
    shown = _resolve(url, tmp_path / "other", hub.url)
    assert shown.returncode == 2 and "not " + "3" * 64 in shown.stderr, shown.stderr
    good = _resolve(f"https://huggingface.co/{KEY}#sha256={hashlib.sha256(body).hexdigest()}", tmp_path / "good",
                    hub.url)
    assert good.returncode == 0 and Path(good.stdout.strip()).read_bytes() == body
