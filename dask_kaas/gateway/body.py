"""An infer request's body before it is parsed: decompressed a step at a time, and its JSON's size,
nesting, arrays, objects and separators bounded by what the called function declares, so no body can
cost more than its function's tensors justify (gzip and deflate bombs, deep or wide JSON)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from ..functions import Function
from ..names import show
from .oip_error import OipError

__all__ = ["BodyBudget", "JsonStructure", "body_budget", "check_structure", "decode_body"]


def decode_body(body: bytes, encoding: str | None, limit: int, feed=None) -> bytes:
    """The body after its ``Content-Encoding`` (gzip, deflate or none), never more than ``limit`` bytes;
    ``feed(piece)`` sees each piece as it is decompressed (the whole body when not compressed), so a
    check can stop a bomb at its first bad piece, before the rest is inflated."""
    if not encoding or encoding.lower() == "identity":
        if len(body) > limit:
            raise OipError(413, f"the body is {len(body)} bytes, more than the limit of {limit} for this call")
        if feed is not None:
            feed(body)
        return body
    encoding = encoding.lower()
    if encoding not in ("gzip", "deflate"):
        raise OipError(415, f"Content-Encoding {show(encoding)} is not supported (gzip, deflate or none)")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    pieces, size, data = [], 0, body
    while True:
        try:
            piece = d.decompress(data, _INFLATE_STEP)
        except zlib.error as e:
            raise OipError(400, f"the body is not valid {encoding} data ({e})") from None
        data = d.unconsumed_tail
        size += len(piece)
        if size > limit:
            raise OipError(413, f"the decompressed body is larger than the limit of {limit} bytes for this call")
        if piece:
            if feed is not None:
                feed(piece)
            pieces.append(piece)
        if d.eof or (not data and len(piece) < _INFLATE_STEP):
            return b"".join(pieces)


JSON_OVERHEAD = 64 * 1024  # bytes of an infer body's JSON beyond its tensors' data: names, shapes, parameters
CHARS_PER_ELEMENT = 48  # the longest number (24 characters), its separator, a pretty-printer's newline and indent
NESTING_MARGIN = 6  # levels above a tensor's data: the body, inputs, the tensor; parameters inside those
STRUCTURE_MARGIN = 64  # arrays and objects a body may hold beyond its tensors' (outputs, parameters)
COMMA_MARGIN = 4096  # separators beyond one per element, array and field: parameters, outputs
_SCAN_BLOCK = 1 << 18  # bytes of JSON scanned at a time (NumPy temporaries of a few MiB at most)
_INFLATE_STEP = 1 << 18  # bytes decompressed at a time, each checked before the next is inflated


@dataclass(frozen=True)
class BodyBudget:
    """What reading one infer body may cost, from the function's declared inputs (:func:`body_budget`).

    ``json`` bytes of JSON (a whole JSON body, or the header before binary data), ``binary`` bytes
    of raw tensor data after it, ``total`` bytes of both (within the gateway's ``max-body``); in the
    JSON at most ``depth`` levels of nesting, ``arrays`` arrays, ``objects`` objects and ``commas``
    separators, checked before ``json.loads`` builds anything.
    """

    json: int
    binary: int
    total: int
    depth: int
    arrays: int
    objects: int
    commas: int


def body_budget(fn: Function, max_body: int, max_json: int) -> BodyBudget:
    """The budget of an infer body of ``fn``: JSON of at most a fixed overhead plus ``CHARS_PER_ELEMENT``
    characters per declared element (never more than ``max_json``), binary data of exactly the inputs'
    bytes, and the arrays, objects and nesting that nested ``data`` of the declared shapes needs."""
    elements = binary = deepest = 0
    arrays = objects = STRUCTURE_MARGIN
    for spec in fn.inputs:
        elements += math.prod(spec.shape)
        binary += spec.nbytes
        deepest = max(deepest, len(spec.shape))
        nested, rows = 0, 1  # lists nested as the shape: 1 + d0 + d0*d1 + ... (the innermost hold elements)
        for d in spec.shape:
            nested, rows = nested + rows, rows * d
        arrays += 1 + max(1, nested)  # its shape and its data
        objects += 2  # the tensor and its parameters
    objects += 2 * len(fn.outputs)
    json_bytes = min(max_json, max_body, JSON_OVERHEAD + elements * CHARS_PER_ELEMENT)
    return BodyBudget(
        json=json_bytes,
        binary=binary,
        total=min(max_body, json_bytes + binary),
        depth=3 + deepest + NESTING_MARGIN,
        arrays=arrays,
        objects=objects,
        commas=elements + arrays + 16 * objects + COMMA_MARGIN,
    )


class JsonStructure:
    """Checks JSON, fed in pieces, against a :class:`BodyBudget` before ``json.loads`` builds anything
    (which for ``[[],[],...]`` costs ~30 bytes of memory and ~0.2 us per byte): 400 at the first block
    that nests deeper or holds more arrays, objects or separators than the budget. NumPy over the
    bytes, in blocks, not counting what is inside strings."""

    def __init__(self, budget: BodyBudget, what: str) -> None:
        self.budget, self.what = budget, what
        self.depth = self.deepest = self.arrays = self.objects = self.commas = self.inside = 0
        self.held = b""  # backslashes ending the last piece: what they escape comes in the next

    def feed(self, piece: bytes) -> None:
        piece, self.held = self.held + piece, b""
        if b"\\" in piece:  # escapes out of the way: every quote left starts or ends a string
            run = len(piece) - len(piece.rstrip(b"\\"))
            if run:
                piece, self.held = piece[:-run], piece[-run:]
            piece = piece.replace(b"\\\\", b"  ").replace(b'\\"', b"  ")
        view = np.frombuffer(piece, np.uint8)
        for start in range(0, len(view), _SCAN_BLOCK):
            self._block(view[start : start + _SCAN_BLOCK])

    def _block(self, block: np.ndarray) -> None:
        quotes = block == 34
        outside = ((np.cumsum(quotes, dtype=np.int32) + self.inside) & 1) == 0
        self.inside = (self.inside + int(np.count_nonzero(quotes))) & 1
        opens_a, opens_o = (block == 91) & outside, (block == 123) & outside
        closes = ((block == 93) | (block == 125)) & outside
        self.arrays += int(np.count_nonzero(opens_a))
        self.objects += int(np.count_nonzero(opens_o))
        self.commas += int(np.count_nonzero((block == 44) & outside))
        level = np.cumsum(opens_a.view(np.int8) + opens_o.view(np.int8) - closes.view(np.int8), dtype=np.int32)
        self.deepest = max(self.deepest, self.depth + int(level.max()))
        self.depth += int(level[-1])
        budget = self.budget
        for problem, got, most in (
            ("nests deeper than {} levels", self.deepest, budget.depth),
            ("holds more than {} arrays", self.arrays, budget.arrays),
            ("holds more than {} objects", self.objects, budget.objects),
            ("holds more than {} commas", self.commas, budget.commas),
        ):
            if got > most:
                raise OipError(400, f"{self.what} {problem.format(most)}: more than this model's inputs need")


def check_structure(text: bytes, budget: BodyBudget, what: str) -> None:
    """:class:`JsonStructure` of the whole ``text`` at once: 400 when it is over ``budget``."""
    JsonStructure(budget, what).feed(text)
