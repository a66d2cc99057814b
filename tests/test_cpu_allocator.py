"""retain_freed_cpu_memory: glibc serves multi-MB tensors from the heap instead of mmap."""

import subprocess
import sys
import textwrap

import pytest

import attreg

PROBE = textwrap.dedent(
    """
    import ctypes, sys, torch, attreg

    class MallInfo2(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(n, ctypes.c_size_t) for n in names.split()]

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print("skip"); sys.exit(0)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "on":
        assert attreg.retain_freed_cpu_memory()
    before = libc.mallinfo2().hblkhd
    t = torch.ones(2_000_000)  # 8 MB
    print(libc.mallinfo2().hblkhd - before)
    """
)


def _mmapped_bytes(mode: str) -> int | None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return None if out[-1] == "skip" else int(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_large_tensors_come_from_the_heap_once_enabled():
    default, retained = _mmapped_bytes("off"), _mmapped_bytes("on")
    if default is None:
        pytest.skip("glibc without mallinfo2")
    assert default >= 8_000_000  # glibc maps an 8 MB block by default
    assert retained == 0  # ... and serves it from the heap once the threshold is raised


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold_bytes"):
        attreg.retain_freed_cpu_memory(-1)
