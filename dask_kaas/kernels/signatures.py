"""Kernel signatures: the parameters of ``extern "C" __global__`` kernels, parsed from CUDA C++.

Kernel parameters are passed *literals (scalars) first, then buffers (pointers)*; a
:class:`KernelSignature` exposes both groups and whether the declared order already matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import KernelError

_DTYPES = {
    "float": "float32",
    "double": "float64",
    "int": "int32",
    "signed": "int32",
    "signed int": "int32",
    "int32_t": "int32",
    "unsigned": "uint32",
    "unsigned int": "uint32",
    "uint32_t": "uint32",
    "long": "int64",
    "long int": "int64",
    "long long": "int64",
    "long long int": "int64",
    "signed long long": "int64",
    "int64_t": "int64",
    "ptrdiff_t": "int64",
    "unsigned long": "uint64",
    "unsigned long int": "uint64",
    "unsigned long long": "uint64",
    "unsigned long long int": "uint64",
    "uint64_t": "uint64",
    "size_t": "uint64",
    "char": "int8",
    "signed char": "int8",
    "int8_t": "int8",
    "unsigned char": "uint8",
    "uint8_t": "uint8",
    "void": "uint8",
    "short": "int16",
    "short int": "int16",
    "int16_t": "int16",
    "unsigned short": "uint16",
    "unsigned short int": "uint16",
    "uint16_t": "uint16",
    "half": "float16",
    "__half": "float16",
    "bool": "bool",
}
_CODES = {"int32": "i", "uint32": "I", "int64": "q", "uint64": "Q", "float32": "f", "float64": "d"}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter. ``const`` qualifies the value (scalars) or the pointee (pointers)."""

    name: str
    ctype: str
    pointer: bool = False
    const: bool = False

    @property
    def dtype(self) -> np.dtype | None:
        """NumPy dtype of the value or pointee (``void*`` -> uint8); None for unknown types."""
        name = _DTYPES.get(self.ctype)
        return np.dtype(name) if name else None

    @property
    def code(self) -> str | None:
        """``struct`` code of a scalar (one of ``i I q Q f d``); None for pointers/unsupported."""
        if self.pointer:
            return None
        dtype = self.dtype
        return _CODES.get(dtype.name) if dtype is not None else None


@dataclass(frozen=True)
class KernelSignature:
    """A kernel's name and its parameters in declared order."""

    name: str
    params: tuple[Param, ...]

    @property
    def literals(self) -> tuple[Param, ...]:
        """Non-pointer parameters, in declared order."""
        return tuple(p for p in self.params if not p.pointer)

    @property
    def buffers(self) -> tuple[Param, ...]:
        """Pointer parameters, in declared order."""
        return tuple(p for p in self.params if p.pointer)

    @property
    def literal_codes(self) -> tuple[str | None, ...]:
        return tuple(p.code for p in self.literals)

    @property
    def scalars_first(self) -> bool:
        """True if every scalar is declared before every pointer (the launch order)."""
        seen_pointer = False
        for p in self.params:
            if p.pointer:
                seen_pointer = True
            elif seen_pointer:
                return False
        return True


def _strip_comments(source: str) -> str:
    """Blank out comments, string literals other than "C", and preprocessor lines."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)

    def repl(m: re.Match) -> str:
        text = m.group(0)
        if text == '"C"':
            return text
        return re.sub(r"[^\n]", " ", text)  # keep offsets and line breaks

    out = pattern.sub(repl, source)
    # Preprocessor directives, including backslash-continued lines.
    return re.sub(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", lambda m: re.sub(r"[^\n]", " ", m.group(0)), out, flags=re.M)


def _parse_param(text: str, index: int) -> Param | None:
    text = text.strip()
    if not text or text == "void":
        return None
    text = re.sub(r"=.*$", "", text, flags=re.S)  # default arguments
    array = bool(re.search(r"\[\s*\w*\s*\]\s*$", text))
    text = re.sub(r"\[\s*\w*\s*\]\s*$", "", text)
    tokens = re.findall(r"[A-Za-z_][\w:]*|\*|&", text)
    pointer = array or "*" in tokens
    first_star = tokens.index("*") if "*" in tokens else len(tokens)
    const = "const" in tokens[:first_star]
    words = [t for t in tokens if t not in _QUALIFIERS and t not in ("*", "&")]
    if len(words) >= 2 and " ".join(words) not in _DTYPES:
        name, type_words = words[-1], words[:-1]
    else:
        name, type_words = f"arg{index}", words
    ctype = " ".join(type_words)
    if not ctype:
        raise KernelError(f"cannot read the kernel parameter {text!r}")
    return Param(name=name, ctype=ctype, pointer=pointer, const=const)


def parse_params(text: str) -> tuple[Param, ...]:
    """Parameters from a C parameter list such as ``"int n, const float* __restrict__ a"``."""
    params = []
    for i, part in enumerate(text.split(",")):
        p = _parse_param(part, i)
        if p is not None:
            params.append(p)
    return tuple(params)


_ATTRIBUTE = re.compile(r"\s*(__launch_bounds__|__maxnreg__|__cluster_dims__|__attribute__)\s*\(")
_WORD = re.compile(r"\s*([A-Za-z_]\w*)")


def _skip_parens(text: str, i: int) -> int:
    """Index just past the parenthesised group opening at ``text[i] == '('``."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def _extern_c_blocks(text: str) -> list[tuple[int, int]]:
    blocks = []
    for m in re.finditer(r'\bextern\s+"C"\s*\{', text):
        depth, start = 0, m.end() - 1
        end = len(text)
        for j in range(start, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
        blocks.append((start, end))
    return blocks


def parse_signatures(source: str) -> dict[str, KernelSignature]:
    """Signatures of every ``extern "C" __global__ void`` kernel in ``source``.

    Finds kernels declared ``extern "C"`` directly or inside an ``extern "C" { ... }`` block,
    across newlines and comments, with ``__launch_bounds__(...)`` before or after ``void`` and
    ``const``/``__restrict__`` qualifiers. Templates and C++-linkage kernels are ignored (they
    have mangled names). Later declarations of a name replace earlier ones.
    """
    text = _strip_comments(source)
    blocks = _extern_c_blocks(text)
    found: dict[str, KernelSignature] = {}
    for m in re.finditer(r"\b__global__\b", text):
        before = text[: m.start()]
        stmt_start = max(before.rfind(";"), before.rfind("}"), before.rfind("{")) + 1
        prefix = before[stmt_start:]
        in_block = any(s < m.start() < e for s, e in blocks)
        if "template" in prefix or not (in_block or re.search(r'\bextern\s+"C"', prefix)):
            continue
        i, words = m.end(), []
        while True:
            attr = _ATTRIBUTE.match(text, i)
            if attr:
                i = _skip_parens(text, attr.end() - 1)
                continue
            word = _WORD.match(text, i)
            if not word:
                break
            words.append(word.group(1))
            i = word.end()
        paren = re.compile(r"\s*\(").match(text, i)
        if not paren or len(words) < 2 or words[-2] != "void":
            continue
        end = _skip_parens(text, paren.end() - 1)
        name = words[-1]
        found[name] = KernelSignature(name, parse_params(text[paren.end() : end - 1]))
    return found
