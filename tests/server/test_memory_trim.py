"""A serving process gives the C allocator's freed memory back to the system (server.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import pytest

from appliance import server


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_returned_on_glibc() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    info = libc.mallinfo2 if hasattr(libc, "mallinfo2") else None
    # Many small blocks (below the mmap threshold: they live in the heap), then all freed.
    blocks = [libc.malloc(16 * 1024) for _ in range(4096)]  # 64 MiB
    for block in blocks:
        libc.free(block)

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )]  # fmt: skip

    if info is not None:
        info.restype = MallInfo2
        before = info().fordblks + info().arena
    assert server.trim_memory() is True
    if info is not None:  # the heap's free bytes were handed back: its arena shrank
        after = info().fordblks + info().arena
        assert after < before
