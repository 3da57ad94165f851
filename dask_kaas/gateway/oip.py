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
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from ..functions import Function, TensorSpec
from ..names import show
from .body import BodyBudget, JsonStructure, body_budget, check_structure, decode_body
from .inference_stats import InferenceStats
from .oip_error import OipError

__all__ = [
    "BINARY_HEADER",
    "BodyBudget",
    "InferCall",
    "InferenceStats",
    "JsonStructure",
    "OipError",
    "body_budget",
    "build_call",
    "check_structure",
    "decode_body",
    "encode_outputs",
    "model_config",
    "model_metadata",
    "parse_infer",
    "read_infer",
]

BINARY_HEADER = "inference-header-content-length"


def _not_json(constant: str):
    """``json.loads``'s ``parse_constant``: Python reads NaN and Infinity, which JSON does not have."""
    raise ValueError(f"{constant} is not a JSON value (JSON has no NaN or Infinity)")


@dataclass
class InferCall:
    """A parsed infer request: inputs as NumPy arrays by buffer name, and how to answer."""

    inputs: dict[str, np.ndarray]
    outputs: list[tuple[TensorSpec, bool]]  # (output, as binary)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def read_infer(
    body: bytes, encoding: str | None, header_length: str | None, fn: Function, budget: BodyBudget
) -> InferCall:
    """:func:`parse_infer` of a body as received: decompressed no further than ``budget`` allows (its
    JSON, and with ``Inference-Header-Content-Length`` its binary data too), the JSON checked against
    it before it is parsed. Everything reading a body costs is bounded by what ``fn`` declares.

    Raises
    ------
    OipError
        413 over the budget, 415 for an unknown encoding, 400 as :func:`parse_infer`.
    """
    if header_length is not None:
        return parse_infer(decode_body(body, encoding, budget.total), header_length, fn, budget)
    what = "the inference request"  # all JSON: checked as it is decompressed, then parsed as parse_infer does
    text = decode_body(body, encoding, budget.json, JsonStructure(budget, what).feed)
    return build_call(_json(text, what), memoryview(b""), fn)


def _json(text: bytes, what: str, budget: BodyBudget | None = None):
    if budget is not None:
        if len(text) > budget.json:
            raise OipError(
                413,
                f"{what} is {len(text)} bytes of JSON, more than the limit of {budget.json} "
                f"for this model's inputs (large tensors go as binary data: binary_data_size)",
            )
        check_structure(text, budget, what)
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as e:
        raise OipError(400, f"{what} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def _shape(value, where: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > 32
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise OipError(400, f"{where}: shape must be a list of non-negative integers, got {show(value)}")
    return tuple(value)


def _element(i: int, shape: tuple[int, ...]) -> str:
    """``element 5``, with its index in ``shape`` too when it has several dimensions."""
    if len(shape) < 2:
        return f"element {i}"
    return f"element {i} {[int(d) for d in np.unravel_index(i, shape)]}"


def _leaves(data, shape: tuple[int, ...], where: str) -> list:
    """The elements of ``data``: a flat list of exactly the element count, or lists nested exactly as ``shape``."""
    count = math.prod(shape)
    if not shape and not isinstance(data, list):
        return [data]
    if not isinstance(data, list):
        raise OipError(400, f"{where}: data must be a list, got {show(data)}")
    if list not in set(map(type, data)):
        if len(data) != count:
            raise OipError(400, f"{where}: data holds {len(data)} elements, the shape needs {count}")
        return data
    level = [data]
    for depth, n in enumerate(shape):
        deeper: list = []
        for item in level:
            if not isinstance(item, list) or len(item) != n:
                got = f"a list of {len(item)}" if isinstance(item, list) else show(item)
                raise OipError(
                    400,
                    f"{where}: data must be a flat list of {count} elements or lists nested as "
                    f"{list(shape)}; at depth {depth} it holds {got} where the shape has {n}",
                )
            deeper.extend(item)
        level = deeper
    if list in set(map(type, level)):
        raise OipError(
            400,
            f"{where}: data must be a flat list of {count} elements or lists nested as "
            f"{list(shape)}; it is nested deeper",
        )
    return level


def _what(value) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        return f"a string {show(value)}"
    return f"a JSON {type(value).__name__}" if isinstance(value, dict) else show(value)


def _values(data, spec: TensorSpec, where: str) -> np.ndarray:
    """JSON ``data`` as ``spec``'s array, exactly: BOOL takes true and false, the other datatypes numbers
    within their range (integers for the integer ones); never null, NaN or a value that would round to infinity."""
    values = _leaves(data, spec.shape, where)
    dtype, name = spec.dtype, spec.datatype
    allowed = (bool,) if dtype.kind == "b" else (int, float)
    types = set(map(type, values))

    def refuse(i: int, problem: str) -> NoReturn:
        raise OipError(400, f"{where}: data is not {name}: {_element(i, spec.shape)} {problem}")

    if not types <= set(allowed):
        i = next(i for i, v in enumerate(values) if type(v) not in allowed)
        refuse(i, f"is {_what(values[i])}, {name} takes {'true or false' if dtype.kind == 'b' else 'numbers'}")
    if dtype.kind == "f":
        try:
            wide = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond any float
            wide = np.array([v if abs(v) <= sys.float_info.max else math.inf for v in values], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            array = wide.astype(dtype)
        bad = ~np.isfinite(array)
        if bad.any():
            i = int(np.argmax(bad))
            value = values[i]
            if isinstance(value, float) and not math.isfinite(value):  # 1e400 reads as inf
                refuse(i, f"({show(value)}) is not a finite number")
            refuse(i, f"({show(value)}) is beyond {name}'s range (largest {np.finfo(dtype).max})")
    elif dtype.kind in "iu":
        if float in types:
            fraction = next((i for i, v in enumerate(values) if type(v) is float and not v.is_integer()), None)
            if fraction is not None:
                refuse(fraction, f"({show(values[fraction])}) is not an integer")
        info = np.iinfo(dtype)
        if values and (min(values) < info.min or max(values) > info.max):
            i = next(i for i, v in enumerate(values) if not info.min <= v <= info.max)
            refuse(i, f"({show(values[i])}) is out of {name}'s range [{info.min}, {info.max}]")
        array = np.array(values, dtype=dtype)
    else:
        array = np.array(values, dtype=dtype)
    return array.reshape(spec.shape)


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OipError(400, f"{where}: parameters must be an object, got {show(value)}")
    return value


def parse_infer(body: bytes, header_length: str | None, fn: Function, budget: BodyBudget | None = None) -> InferCall:
    """Parse an infer body for ``fn``: every input checked against its declared datatype and shape (and,
    given a ``budget``, the JSON and binary parts against it before anything is parsed: 413 or 400).

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
            raise OipError(
                400,
                f"Inference-Header-Content-Length {show(header_length)} is not a byte count "
                f"within the body's {len(body)} bytes",
            )
        header, binary = body[:n], memoryview(body)[n:]
    else:
        header, binary = body, memoryview(b"")
    if budget is not None and len(binary) > budget.binary:
        raise OipError(
            413,
            f"the body has {len(binary)} bytes of binary data, more than the limit of "
            f"{budget.binary} for this model's inputs",
        )
    return build_call(_json(header, "the inference request", budget), binary, fn)


def _no_tenant(item: dict, parameters: dict, where: str) -> None:
    """400 for a ``tenant`` anywhere a caller could try to name one: the tenant is the bearer token's."""
    if "tenant" in item:
        raise OipError(400, f"{where}: 'tenant' is not accepted: the tenant is the bearer token's")
    if "tenant" in parameters:
        raise OipError(400, f"{where}: parameter 'tenant' is not accepted: the tenant is the bearer token's")


def build_call(doc, binary: bytes | memoryview, fn: Function) -> InferCall:
    """An infer request for ``fn`` from its decoded JSON document and the binary data after it (what
    every transport reads into: REST's JSON and binary extension, gRPC's message and raw contents).

    The protocol's optional fields (``id``, ``model_name``, ``model_version``, ``parameters``) are read
    and fields it does not name are ignored, as its schema allows (kserve's client always sends
    ``model_name``); a ``model_name`` or ``model_version`` other than the called one is refused.

    Raises
    ------
    OipError
        400 naming the field or tensor, as :func:`parse_infer`.
    """
    binary = memoryview(binary)
    if not isinstance(doc, dict):
        raise OipError(400, f"the inference request must be a JSON object, got {show(doc)}")
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 256):
        raise OipError(400, f"id must be a string of at most 256 characters, got {show(request_id)}")
    parameters = _parameters(doc.get("parameters"), "the inference request")
    _no_tenant(doc, parameters, "the inference request")
    for key, what, called in (
        ("model_name", "model", (fn.name, fn.qualified_name)),
        ("model_version", "version", (str(fn.version),)),
    ):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise OipError(400, f"{key} must be a string, got {show(value)}")
        if value is not None and value not in called:
            raise OipError(400, f"{key} {show(value)} is not the {what} called, {called[0]!r}")
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
        if not isinstance(name, str) or name not in declared:
            raise OipError(
                400, f"{where} is not an input of model {fn.name!r} (inputs: {', '.join(declared) or 'none'})"
            )
        if name in inputs:
            raise OipError(400, f"{where} is given twice")
        item_parameters = _parameters(item.get("parameters"), where)
        _no_tenant(item, item_parameters, where)
        spec = declared[name]
        if item.get("datatype") != spec.datatype:
            raise OipError(400, f"{where}: datatype {show(item.get('datatype'))}, the model takes {spec.datatype}")
        shape = _shape(item.get("shape"), where)
        if shape != spec.shape:
            raise OipError(400, f"{where}: shape {list(shape)}, the model takes {list(spec.shape)}")
        size = item_parameters.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise OipError(400, f"{where}: both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise OipError(400, f"{where}: binary_data_size must be a byte count, got {show(size)}")
            if size != spec.nbytes:
                raise OipError(
                    400,
                    f"{where}: {size} bytes of binary data, {spec.datatype} {list(spec.shape)} is {spec.nbytes} bytes",
                )
            if offset + size > len(binary):
                raise OipError(400, f"{where}: binary data ends after {len(binary) - offset} of its {size} bytes")
            inputs[name] = np.frombuffer(binary[offset : offset + size], dtype=spec.dtype).reshape(spec.shape)
            offset += size
        else:
            if "data" not in item:
                raise OipError(400, f"{where}: no data and no binary_data_size")
            inputs[name] = _values(item["data"], spec, where)
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
        seen: set[str] = set()
        for j, out in enumerate(requested):
            name = out.get("name") if isinstance(out, dict) else out
            if not isinstance(out, dict) or not isinstance(name, str) or name not in by_name:
                raise OipError(
                    400,
                    f"outputs[{j}]: {show(name)} is not an output of model {fn.name!r} (outputs: {', '.join(by_name)})",
                )
            if name in seen:
                raise OipError(400, f"outputs[{j}]: output {name!r} is requested twice")
            seen.add(name)
            out_parameters = _parameters(out.get("parameters"), f"output {name!r}")
            _no_tenant(out, out_parameters, f"output {name!r}")
            as_binary = out_parameters.get("binary_data")
            outputs.append((by_name[name], binary_default if as_binary is None else as_binary is True))
    return InferCall(inputs, outputs, request_id, parameters)


def encode_outputs(fn: Function, call: InferCall, results: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its headers (``Inference-Header-Content-Length`` when binary).

    Raises
    ------
    OipError
        422 when an output asked for as JSON holds NaN or infinity, which JSON cannot carry (as
        binary it can: the message says how to ask for it).
    """
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
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                i = int(np.argmin(np.isfinite(array).ravel()))
                raise OipError(
                    422,
                    f"output {spec.name!r}: {_element(i, spec.shape)} is {array.ravel()[i]}, which "
                    f'JSON cannot carry; ask for this output as binary data ("binary_data": true '
                    f'in its parameters, or "binary_data_output": true in the request\'s)',
                )
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": fn.name, "model_version": str(fn.version), "outputs": tensors}
    if call.id is not None:
        doc["id"] = call.id
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def model_metadata(fn: Function, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: name, versions, platform, inputs and outputs."""
    return {
        "name": fn.name,
        "versions": [str(v) for v in versions],
        "platform": "dask-kaas",
        "inputs": [t.to_dict() for t in fn.inputs],
        "outputs": [t.to_dict() for t in fn.outputs],
    }


def _triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def model_config(fn: Function, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: the function as Triton's model configuration (its JSON form), which
    ``tritonclient``'s ``get_model_config`` reads. No batch dimension: a function's shapes are whole."""

    def tensors(specs):
        return [{"name": t.name, "data_type": _triton_type(t.datatype), "dims": list(t.shape)} for t in specs]

    return {
        "name": fn.name,
        "platform": "dask-kaas",
        "backend": "dask-kaas",
        "max_batch_size": 0,
        "version_policy": {"specific": {"versions": list(versions)}},
        "input": tensors(fn.inputs),
        "output": tensors(fn.outputs),
    }
