"""Open Inference Protocol v2 tensors over REST: what a caller sends, what it gets back (pure).

An infer body is JSON, or, with the binary tensor data extension that ``tritonclient.http`` uses
by default, a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw bytes
of each input that says ``"parameters": {"binary_data_size": n}``, in order. Outputs come back as
JSON ``data`` (flattened, row-major) or, when asked for (``binary_data`` on a requested output, or
``binary_data_output`` on the request), as raw bytes after the JSON header in the same way.

Everything here reads hostile input: each problem is an :class:`OipError` with the HTTP status to
answer and a message naming the field or tensor.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..functions import Function, TensorSpec
from ..names import show

__all__ = ["OipError", "InferCall", "decode_body", "parse_infer", "build_call", "encode_outputs", "model_metadata",
           "BINARY_HEADER"]

BINARY_HEADER = "inference-header-content-length"
_INFER_FIELDS = {"id", "parameters", "inputs", "outputs"}
_INPUT_FIELDS = {"name", "shape", "datatype", "parameters", "data"}


class OipError(Exception):
    """A call the protocol answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class InferCall:
    """A parsed infer request: inputs as NumPy arrays by buffer name, and how to answer."""

    inputs: dict[str, np.ndarray]
    outputs: list[tuple[TensorSpec, bool]]   # (output, as binary)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body after its ``Content-Encoding`` (gzip, deflate or none), never more than ``limit`` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    encoding = encoding.lower()
    if encoding not in ("gzip", "deflate"):
        raise OipError(415, f"Content-Encoding {show(encoding)} is not supported (gzip, deflate or none)")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise OipError(400, f"the body is not valid {encoding} data ({e})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise OipError(413, f"the decompressed body is larger than the gateway's limit of {limit} bytes")
    return out


def _json(text: bytes, what: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise OipError(400, f"{what} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def _shape(value, where: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) > 32
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise OipError(400, f"{where}: shape must be a list of non-negative integers, got {show(value)}")
    return tuple(value)


def _flatten(data, count: int, where: str) -> list:
    """Row-major flattening of nested JSON lists, refusing to hold more than ``count`` elements."""
    out: list = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
            if len(out) > count:
                break
    if len(out) != count:
        raise OipError(400, f"{where}: data holds {'more than ' if len(out) > count else ''}{len(out)} elements, "
                            f"the shape needs {count}")
    return out


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OipError(400, f"{where}: parameters must be an object, got {show(value)}")
    return value


def parse_infer(body: bytes, header_length: str | None, fn: Function) -> InferCall:
    """Parse an infer body for ``fn``: every input checked against its declared datatype and shape.

    Raises
    ------
    OipError
        400 naming the field or tensor: bad JSON, an unknown or missing input, a datatype,
        shape, element count or byte count that does not match, binary sizes that do not add up.
    """
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise OipError(400, f"Inference-Header-Content-Length {show(header_length)} is not a byte count "
                                f"within the body's {len(body)} bytes")
        header, binary = body[:n], memoryview(body)[n:]
    else:
        header, binary = body, memoryview(b"")
    return build_call(_json(header, "the inference request"), binary, fn)


def build_call(doc, binary: bytes | memoryview, fn: Function) -> InferCall:
    """An infer request for ``fn`` from its decoded JSON document and the binary data after it (what
    every transport reads into: REST's JSON and binary extension, gRPC's message and raw contents).

    Raises
    ------
    OipError
        400 naming the field or tensor, as :func:`parse_infer`.
    """
    binary = memoryview(binary)
    if not isinstance(doc, dict):
        raise OipError(400, f"the inference request must be a JSON object, got {show(doc)}")
    unknown = set(doc) - _INFER_FIELDS
    if unknown:
        raise OipError(400, f"unknown field(s) {sorted(map(str, unknown))[:8]} in the inference request "
                            f"(known: {', '.join(sorted(_INFER_FIELDS))})")
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 256):
        raise OipError(400, f"id must be a string of at most 256 characters, got {show(request_id)}")
    parameters = _parameters(doc.get("parameters"), "the inference request")
    if "tenant" in parameters:
        raise OipError(400, "parameter 'tenant' is not accepted: the tenant is the bearer token's")
    declared = {t.name: t for t in fn.inputs}
    items = doc.get("inputs")
    if not isinstance(items, list):
        raise OipError(400, f"inputs must be a list of tensors, got {show(items)}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise OipError(400, f"inputs[{i}] must be an object, got {show(item)}")
        name = item.get("name")
        where = f"input {show(name)}"
        if name not in declared:
            raise OipError(400, f"{where} is not an input of model {fn.name!r} "
                                f"(inputs: {', '.join(declared) or 'none'})")
        if name in inputs:
            raise OipError(400, f"{where} is given twice")
        unknown = set(item) - _INPUT_FIELDS
        if unknown:
            raise OipError(400, f"{where}: unknown field(s) {sorted(map(str, unknown))[:8]}")
        spec = declared[name]
        if item.get("datatype") != spec.datatype:
            raise OipError(400, f"{where}: datatype {show(item.get('datatype'))}, the model takes {spec.datatype}")
        shape = _shape(item.get("shape"), where)
        if shape != spec.shape:
            raise OipError(400, f"{where}: shape {list(shape)}, the model takes {list(spec.shape)}")
        size = _parameters(item.get("parameters"), where).get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise OipError(400, f"{where}: both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise OipError(400, f"{where}: binary_data_size must be a byte count, got {show(size)}")
            if size != spec.nbytes:
                raise OipError(400, f"{where}: {size} bytes of binary data, {spec.datatype} {list(spec.shape)} "
                                    f"is {spec.nbytes} bytes")
            if offset + size > len(binary):
                raise OipError(400, f"{where}: binary data ends after {len(binary) - offset} of its {size} bytes")
            inputs[name] = np.frombuffer(binary[offset:offset + size], dtype=spec.dtype).reshape(spec.shape)
            offset += size
        else:
            if "data" not in item:
                raise OipError(400, f"{where}: no data and no binary_data_size")
            values = _flatten(item["data"], math.prod(spec.shape), where)
            try:
                array = np.array(values, dtype=spec.dtype)
            except (TypeError, ValueError, OverflowError) as e:
                raise OipError(400, f"{where}: data is not {spec.datatype} ({type(e).__name__}: "
                                    f"{str(e)[:120]})") from None
            if array.shape != (len(values),):
                raise OipError(400, f"{where}: data must hold numbers only")
            inputs[name] = array.reshape(spec.shape)
    if offset != len(binary):
        raise OipError(400, f"the body has {len(binary) - offset} bytes of binary data no input claims")
    missing = [n for n in declared if n not in inputs and fn.request.buffers[n].ephemeral]
    if missing:
        raise OipError(400, f"missing input(s) {', '.join(map(repr, missing))} of model {fn.name!r}")
    binary_default = parameters.get("binary_data_output") is True
    requested = doc.get("outputs")
    outputs: list[tuple[TensorSpec, bool]] = []
    by_name = {t.name: t for t in fn.outputs}
    if requested is None:
        outputs = [(t, binary_default) for t in fn.outputs]
    else:
        if not isinstance(requested, list):
            raise OipError(400, f"outputs must be a list, got {show(requested)}")
        for j, out in enumerate(requested):
            if not isinstance(out, dict) or out.get("name") not in by_name:
                name = out.get("name") if isinstance(out, dict) else out
                raise OipError(400, f"outputs[{j}]: {show(name)} is not an output of model {fn.name!r} "
                                    f"(outputs: {', '.join(by_name)})")
            binary = _parameters(out.get("parameters"), f"output {out['name']!r}").get("binary_data")
            outputs.append((by_name[out["name"]], binary_default if binary is None else binary is True))
    return InferCall(inputs, outputs, request_id, parameters)


def encode_outputs(fn: Function, call: InferCall, results: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its headers (``Inference-Header-Content-Length`` when binary)."""
    tensors = []
    blobs = []
    for spec, binary in call.outputs:
        array = np.ascontiguousarray(results[spec.name]).view(spec.dtype).reshape(spec.shape)
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
        if binary:
            raw = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": fn.name, "model_version": str(fn.version), "outputs": tensors}
    if call.id is not None:
        doc["id"] = call.id
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(len(header))}


def model_metadata(fn: Function, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: name, versions, platform, inputs and outputs."""
    return {
        "name": fn.name,
        "versions": [str(v) for v in versions],
        "platform": "dask-kaas",
        "inputs": [t.to_dict() for t in fn.inputs],
        "outputs": [t.to_dict() for t in fn.outputs],
    }
