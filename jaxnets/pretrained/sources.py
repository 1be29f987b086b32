"""Where pretrained weights come from: a local file, a URL, or a name from torchvision's or timm's catalogue.

`timm:` names (`timm:resnet50.a1_in1k`) and Hugging Face hub URLs (`https://huggingface.co/REPO/resolve/REV/FILE`)
are fetched with huggingface_hub's `hf_hub_download` (the [pretrained] extra), so they live in the Hugging Face
cache that timm users already have, and HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and tokens (HF_TOKEN,
`hf auth login`) work as the user set them. A hub file kept by git-lfs is named by its SHA-256 in that cache: it is
checked against it each time it is used.

torchvision names (`torchvision:resnet18`, `torchvision:resnet50.IMAGENET1K_V1`) and other URLs are downloaded
once into jaxnets' own cache and checked against their published hash before they are used; a file that does not
match is never kept. torchvision publishes the first hex digits of each file's SHA-256 in its name
(`resnet18-f37072fd.pth`); any other URL must carry `#sha256=<hex>` and is refused before anything is downloaded
without it. Cached files are named by a digest of their URL and their file name.

`.safetensors` files are read with the safetensors package (no torch needed); `.pth`/`.pt` files only with
`torch.load(weights_only=True)`, never with plain pickle, which could run code from the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..extras import MissingExtra, require
from ..integrity import sha256_file

TORCHVISION = "https://download.pytorch.org/models/"
HUGGINGFACE = "https://huggingface.co/"
MIRROR_ENV = "JAXNETS_WEIGHTS_MIRROR"  # scheme://host[:port] serving torchvision's paths (a company mirror)
# a hub URL: https://huggingface.co/OWNER/NAME/resolve/REVISION/FILE (the hub's own endpoint, or HF_ENDPOINT's)
_HUB_URL = re.compile(r"^https://huggingface\.co/(?P<repo>[\w.-]+/[\w.-]+)/resolve/(?P<revision>[\w.-]+)/"
                      r"(?P<file>[\w.-]+(?:/[\w.-]+)*)$")

# torchvision's ImageNet weights for the models jaxnets has (file names as published; the 8 hex digits are
# the start of the file's SHA-256). The first of each model is the default, torchvision's own DEFAULT.
_TORCHVISION_FILES: dict[str, dict[str, tuple[str, int]]] = {
    # model: {weights name: (file, resize of the shorter side before the 224 centre crop)}
    "alexnet": {"IMAGENET1K_V1": ("alexnet-owt-7be5be79.pth", 256)},
    "vgg11": {"IMAGENET1K_V1": ("vgg11-8a719046.pth", 256)},
    "vgg11_bn": {"IMAGENET1K_V1": ("vgg11_bn-6002323d.pth", 256)},
    "vgg13": {"IMAGENET1K_V1": ("vgg13-19584684.pth", 256)},
    "vgg13_bn": {"IMAGENET1K_V1": ("vgg13_bn-abd245e5.pth", 256)},
    "vgg16": {"IMAGENET1K_V1": ("vgg16-397923af.pth", 256)},
    "vgg16_bn": {"IMAGENET1K_V1": ("vgg16_bn-6c64b313.pth", 256)},
    "vgg19": {"IMAGENET1K_V1": ("vgg19-dcbb9e9d.pth", 256)},
    "vgg19_bn": {"IMAGENET1K_V1": ("vgg19_bn-c79401a0.pth", 256)},
    "resnet18": {"IMAGENET1K_V1": ("resnet18-f37072fd.pth", 256)},
    "resnet34": {"IMAGENET1K_V1": ("resnet34-b627a593.pth", 256)},
    "resnet50": {"IMAGENET1K_V2": ("resnet50-11ad3fa6.pth", 232), "IMAGENET1K_V1": ("resnet50-0676ba61.pth", 256)},
    "resnet101": {"IMAGENET1K_V2": ("resnet101-cd907fc2.pth", 232),
                  "IMAGENET1K_V1": ("resnet101-63fe2227.pth", 256)},
    "resnet152": {"IMAGENET1K_V2": ("resnet152-f82ba261.pth", 232),
                  "IMAGENET1K_V1": ("resnet152-394f9c45.pth", 256)},
}
# timm's ResNets share torchvision's key names (checked by the tests with timm's own models); its other
# families (resnet50d, ResNeSt, …) have other stems and are refused by the import.
_TIMM_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class WeightsError(ValueError):
    """Weights that cannot be had or trusted: an unknown name, a failed download, a hash that differs."""


@dataclass(frozen=True)
class Weights:
    """A resolved source: the local file, the model it is for (when the name says), and its evaluation
    preprocessing (shorter side to size / crop_pct, centre crop of size)."""

    path: Path
    model: str | None = None
    crop_pct: float = 0.875
    imagenet: bool = False  # known to be an ImageNet-1k checkpoint (its classes are the ImageNet names)


def resolve(source: str) -> Weights:
    """A local path, a URL or a catalogue name → the verified local file (downloaded once if needed)."""
    if source.startswith("torchvision:"):
        return _torchvision(source.removeprefix("torchvision:"))
    if source.startswith("timm:"):
        return _timm(source.removeprefix("timm:"))
    if re.match(r"^https?://", source):
        return Weights(hub_download(*hub) if (hub := _hub_parts(source)) else download(source))
    path = Path(source).expanduser()
    if not path.exists():
        raise WeightsError(f"{source}: no such file, and not a name (torchvision:MODEL, timm:MODEL.TAG) or a URL")
    if not path.is_file():
        raise WeightsError(f"{source} is not a weights file (.pth, .pt or .safetensors)")
    return Weights(path)


def _torchvision(name: str) -> Weights:
    model, _, tag = name.partition(".")
    files = _TORCHVISION_FILES.get(model)
    if files is None:
        raise WeightsError(f"torchvision has no ImageNet weights jaxnets can use for {model!r}; choose one of: "
                           f"{', '.join(_TORCHVISION_FILES)}")
    tag = tag or next(iter(files))
    if tag not in files:
        raise WeightsError(f"torchvision's {model} has no weights {tag!r}; choose one of: {', '.join(files)}")
    file, resize = files[tag]
    return Weights(download(TORCHVISION + file), model, round(224 / resize, 6), imagenet=True)


def _timm(name: str) -> Weights:
    model, _, tag = name.partition(".")
    if model not in _TIMM_MODELS or not re.fullmatch(r"[\w.-]+", tag or "-"):
        raise WeightsError(f"timm:{name}: jaxnets imports timm's {', '.join(_TIMM_MODELS)} (their key names match "
                           "torchvision's), named MODEL.TAG, e.g. timm:resnet50.a1_in1k")
    if not tag:
        raise WeightsError(f"timm:{name} needs a pretrained tag, e.g. timm:{model}.a1_in1k")
    crop_pct = 0.95 if re.match(r"a[123]h?_", tag) else 0.875  # timm's own evaluation crops for these tags
    return Weights(hub_download(f"timm/{model}.{tag}", "model.safetensors"), model, crop_pct,
                   imagenet=tag.endswith("in1k"))


def _hub_parts(url: str) -> tuple[str, str, str, str | None] | None:
    """(repo, file, revision, #sha256 or None) of a Hugging Face hub URL, else None."""
    parts = urllib.parse.urlsplit(url)
    match = _HUB_URL.match(urllib.parse.urlunsplit(parts._replace(fragment="")))
    if match is None:
        return None
    expected = _expected_hash(url) if parts.fragment else None
    return match["repo"], match["file"], match["revision"], expected


def hub_download(repo: str, filename: str, revision: str = "main", expected: str | None = None) -> Path:
    """A file of a Hugging Face hub repository through `huggingface_hub.hf_hub_download` (its cache, offline mode,
    endpoint and token, as the user set them), checked against the SHA-256 the hub names it by (git-lfs files) and
    against `expected` when given. WeightsError in one line when it cannot be had."""
    try:
        hub = require("pretrained", "huggingface_hub", "timm: names and Hugging Face hub URLs")
    except MissingExtra as e:
        raise WeightsError(str(e)) from None
    from huggingface_hub import errors
    try:
        path = Path(hub.hf_hub_download(repo, filename, revision=revision, library_name="jaxnets"))
    except errors.LocalEntryNotFoundError as e:  # offline (HF_HUB_OFFLINE, no network) and not in the cache
        raise WeightsError(f"{repo}/{filename} is not in the Hugging Face cache and cannot be downloaded now "
                           f"({_first_line(e)})") from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError) as e:
        raise WeightsError(f"the Hugging Face hub has no {repo}/{filename} at {revision} ({type(e).__name__})"
                           ) from None
    except (errors.HfHubHTTPError, OSError, ValueError) as e:
        raise WeightsError(f"cannot download {repo}/{filename} from the Hugging Face hub: {_first_line(e)}"
                           ) from None
    published = path.resolve().name  # the cache keeps a git-lfs file as blobs/<its SHA-256>
    digest = None
    for want in (published if re.fullmatch(r"[0-9a-f]{64}", published) else None, expected):
        if want is None:
            continue
        digest = digest or sha256_file(path)
        if not digest.startswith(want):
            raise WeightsError(f"{path.resolve()} ({repo}/{filename} in the Hugging Face cache) has SHA-256 "
                               f"{digest}, not {want}: a damaged or substituted file; delete it to download it again")
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _mirrored(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _expected_hash(url: str) -> str | None:
    """The SHA-256 (or its start) the URL's publisher gives before anything is downloaded: `#sha256=<hex>`, or
    the hex digits torchvision puts in its file names (on its own server only); a Hugging Face hub URL (whose
    files the hub names by their SHA-256) needs none. Any other URL without one is refused."""
    parts = urllib.parse.urlsplit(url)
    if parts.fragment.startswith("sha256="):
        digest = parts.fragment.removeprefix("sha256=").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise WeightsError(f"{url}: #sha256= must be followed by 64 hex digits")
        return digest
    if url.startswith(TORCHVISION):
        match = re.search(r"-([0-9a-f]{8,64})\.(pth|pt)$", Path(parts.path).name)
        if match:
            return match.group(1)
    if _HUB_URL.match(urllib.parse.urlunsplit(parts._replace(fragment=""))):
        return None
    raise WeightsError(f"{urllib.parse.urlunsplit(parts._replace(fragment=''))} publishes no hash to check the file "
                       "against: add #sha256=<its SHA-256> to the URL")


def check_url(url: str) -> None:
    """Refuse, before anything is downloaded, a URL that could not be verified."""
    _expected_hash(url)


def cached_path(url: str, name: str) -> Path:
    """Where the file of `url` is kept: its name behind a digest of the URL, so that two URLs ending in the same
    file name never share (or overwrite) a cached file."""
    key = hashlib.sha256(urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(fragment="")).encode())
    return cache_dir() / "weights" / f"{key.hexdigest()[:12]}-{name}"


def download(url: str, cache_name: str | None = None, timeout: float = 60.0) -> Path:
    """The cached file of `url` (not a hub URL: those go through `hub_download`), downloading it first if it is
    not there yet; its SHA-256 must match the published one, else nothing is kept and WeightsError says so."""
    parts = urllib.parse.urlsplit(url)
    name = cache_name or Path(parts.path).name
    if not re.fullmatch(r"[\w.+-]+", name) or name.startswith("."):
        raise WeightsError(f"{url}: cannot tell a file name from this URL")
    expected = _expected_hash(url)
    if expected is None:  # a hub URL: the hub's client and cache, not this one
        raise WeightsError(f"{url}: a Hugging Face hub file; resolve() fetches it with huggingface_hub")
    target = cached_path(url, name)
    if target.is_file() and not target.is_symlink():  # verified when downloaded; checked again where it can be
        if not sha256_file(target).startswith(expected):
            raise WeightsError(f"{target} (the cached {url}) does not match its published SHA-256 {expected}: "
                               "delete it to download it again")
        return target
    fetch = _mirrored(urllib.parse.urlunsplit(parts._replace(fragment="")))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        digest = _fetch(fetch, partial, timeout)
        if not digest.startswith(expected):
            raise WeightsError(f"{fetch}: the downloaded file's SHA-256 is {digest}, not the published "
                               f"{expected}: a damaged or substituted file, not kept")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _fetch(url: str, partial: Path, timeout: float) -> str:
    """Stream `url` into `partial` (redirects followed): its SHA-256."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "jaxnets"}),
                                          timeout=timeout)
        with response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=partial.name[1:].split(".")[0],
                      disable=None, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise WeightsError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"cannot download {url}: {reason}") from None
    return digest.hexdigest()


def read_state(path: Path) -> dict[str, np.ndarray]:
    """{key: float array} of a .safetensors or .pth/.pt state dict (a checkpoint wrapping one under
    "state_dict" or "model" is unwrapped; DataParallel's "module." prefixes are dropped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    elif path.suffix in (".pth", ".pt", ".bin"):
        state = _read_torch(path)
    else:
        raise WeightsError(f"{path}: weights must be a .safetensors, .pth or .pt file")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    if not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        load_file = require("pretrained", "safetensors.numpy", f"reading {path.name}").load_file
    except MissingExtra as e:  # the one line naming `pip install 'jaxnets[pretrained]'`
        raise WeightsError(str(e)) from None
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e})") from None


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"reading {path.name} needs PyTorch (CPU build is enough): pip install torch "
                           "--index-url https://download.pytorch.org/whl/cpu, or convert the file to .safetensors"
                           ) from None
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols: the one line below says enough
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError…): one answer
        # torch's own text advises weights_only=False, i.e. running the file's code: not advice to pass on
        raise WeightsError(f"{path} is not a PyTorch state dict that can be read without running code "
                           f"({type(e).__name__}): jaxnets never unpickles objects") from None

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
        if isinstance(value, dict):
            return {k: to_numpy(v) for k, v in value.items()}
        return value

    if not isinstance(loaded, dict):
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return to_numpy(loaded)
