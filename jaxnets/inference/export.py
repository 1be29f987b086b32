"""A checkpoint as one portable function: uint8 NHWC pixels (as the card's PreprocessSpec makes them) in,
class probabilities out, the standardisation and the weights inside, the batch dimension symbolic.

* StableHLO through `jax.export`: the serialized `Exported`, which `jax.export.deserialize(data).call(x)` runs
  with JAX alone (no jaxnets, no Flax), lowered for the platforms asked for (CPU and CUDA by default).
* ONNX through jax2onnx: it converts the jaxpr primitive by primitive into an ONNX graph, without TensorFlow
  (the jax2tf → tf2onnx route needs TensorFlow, which the experimental jax2tf path is leaving). onnxruntime
  runs the file; the class names and the preprocessing ride along as metadata.

The function is the same `forward` every prediction uses (one preprocessing path), traced outside
`runtime.jit`, so no CPU-specific rewrite ends up in a file meant for any machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from .predictor import Predictor
from .scoring import forward, probabilities

__all__ = ["FORMATS", "ExportError", "export_bytes", "metadata", "probability_function"]

FORMATS = ("onnx", "stablehlo")
DEFAULT_PLATFORMS = ("cpu", "cuda")


class ExportError(ValueError):
    """The model cannot be written in the format asked for; the message names the operation."""


def probability_function(predictor: Predictor) -> Callable[[jax.Array], jax.Array]:
    """uint8 [N,H,W,C] → float32 probabilities [N, classes], with the weights as constants."""
    variables = jax.tree.map(np.asarray, predictor.variables)
    apply = forward(predictor.model, predictor.spec)
    binary = predictor.binary
    return lambda pixels: probabilities(apply(variables, pixels), binary)


def _input(predictor: Predictor) -> jax.ShapeDtypeStruct:
    h, w, c = predictor.spec.shape
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"batch, {h}, {w}, {c}"), jnp.uint8)


def metadata(predictor: Predictor) -> dict[str, str]:
    """What a user of the file needs besides it: classes and preprocessing (how to make the pixels)."""
    h, w, c = predictor.spec.shape
    return {"classes": json.dumps(list(predictor.classes)), "preprocess": json.dumps(asdict(predictor.spec)),
            "input": f"uint8 [batch, {h}, {w}, {c}] (NHWC, as the preprocessing makes them)",
            "output": f"float32 [batch, {len(predictor.classes)}] class probabilities",
            "model": predictor.card.model}


def _primitives(jaxpr) -> set[str]:
    """Every primitive of a jaxpr, its sub-jaxprs' (scans, conds, custom derivatives) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


def _host_only(fn: Callable, spec: jax.ShapeDtypeStruct) -> list[str]:
    """The operations that run Python on the host (callbacks): no file format can hold them."""
    try:
        jaxpr = jax.make_jaxpr(fn)(spec).jaxpr
    except (TypeError, ValueError, NotImplementedError):  # the trace itself fails: the exporter will say why
        return []
    names = _primitives(jaxpr)
    return sorted(n for n in names if "callback" in n)


def _stablehlo(predictor: Predictor, platforms: Sequence[str]) -> bytes:
    fn = jax.jit(probability_function(predictor))
    where = f"{predictor.card.model} cannot be exported to StableHLO for {', '.join(platforms)}"
    if host := _host_only(fn, _input(predictor)):
        raise ExportError(f"{where}: operation {', '.join(host)} runs Python on the host")
    try:
        return bytes(jax.export.export(fn, platforms=tuple(platforms))(_input(predictor)).serialize())
    except Exception as e:  # jax raises many kinds for an operation it cannot lower: name it, in one line
        raise ExportError(f"{where}: {_first_line(e)}") from None


def _onnx(predictor: Predictor) -> bytes:
    try:
        from jax2onnx import to_onnx
    except ImportError:
        raise ExportError("ONNX export needs jax2onnx: pip install 'jaxnets[export]'") from None
    try:
        proto = to_onnx(probability_function(predictor), [_input(predictor)], model_name=predictor.card.model,
                        input_names=["pixels"], output_names=["probabilities"])
    except Exception as e:  # jax2onnx names the primitive it has no converter for
        raise ExportError(f"{predictor.card.model} cannot be exported to ONNX: {_first_line(e)}") from None
    for key, value in metadata(predictor).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def export_bytes(predictor: Predictor, fmt: str, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> bytes:
    """The file's bytes for `fmt` ("onnx" or "stablehlo")."""
    if fmt == "onnx":
        return _onnx(predictor)
    if fmt == "stablehlo":
        return _stablehlo(predictor, platforms)
    raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
