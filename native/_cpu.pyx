# cython: language_level=3
"""CPU feature detection, compiled ahead of time.

Fast kernels pick their instruction-set path at run time from these flags
(a wheel is built for a portable baseline, never ``-march=native``);
``lstminfer info`` prints them.
"""

cdef extern from "li_cpu.h":
    int lstminfer_has(const char *name) nogil
    int LSTMINFER_X86

# Feature names as GCC spells them, in the order kernels prefer them.
FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16")


def features():
    """Dict feature -> bool for this CPU (all False off x86 or without GCC builtins)."""
    return {name: bool(lstminfer_has(name.encode("ascii"))) for name in FEATURES}


def is_x86():
    return bool(LSTMINFER_X86)
