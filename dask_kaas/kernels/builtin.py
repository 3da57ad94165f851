"""The built-in kernel library: ``builtin.cu`` with its NumPy host twins and launch constraints."""

from __future__ import annotations

import os

from .library import Library
from .twins import TWINS

SOURCE_PATH = os.path.join(os.path.dirname(__file__), "builtin.cu")

CONSTRAINTS = {
    "sgemm": {"block": (16, 16, 1)},  # shared-memory tiles are 16x16
}

builtin = Library.from_file(SOURCE_PATH, twins=TWINS, name="builtin", constraints=CONSTRAINTS)
