"""Keep freed memory in the process for reuse (Linux with glibc; a no-op elsewhere).

glibc hands a freed block of more than a few MB back to the kernel, so the next tensor of that size is faulted in
again, page by page. A training step allocates and frees hundreds of MB of such blocks (logits over the
vocabulary, MLP activations, attention buffers and their gradients): on the 2-core benchmark VM a two-turn DTPO
step of the 30M model took ~170,000 page faults, about 1.2 s of its 7 s. `keep_freed_memory()` raises glibc's
mmap and trim thresholds so that freed blocks stay in the heap and are reused: no page faults after the first
step. The price: memory freed at a step's peak is kept by the process (not returned to the system) until it
exits, which is what a GPU framework's caching allocator does too. Switch: `train.keep_freed_memory`.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_state = {"done": False}


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Ask glibc to serve blocks up to `threshold` bytes from the heap and never trim it below that; True when
    it took (once per process)."""
    if _state["done"]:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl has none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # older glibc refuses an mmap threshold above 32 MB: then keep blocks up to that
    ok = any(mallopt(M_MMAP_THRESHOLD, t) == 1 for t in (threshold, 1 << 25))
    ok = ok and mallopt(M_TRIM_THRESHOLD, threshold) == 1
    _state["done"] = ok
    return ok
