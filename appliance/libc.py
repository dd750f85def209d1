"""Functions of the C library that Python's standard library does not wrap."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


def function(name: str, argtypes: list[Any] | None = None, restype: Any = ctypes.c_int) -> Any:
    """libc's `name` (typed when `argtypes` is given), or None where the C library has none
    (musl, macOS, another kernel)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    if argtypes is not None:
        fn.argtypes = argtypes
    fn.restype = restype
    return fn
