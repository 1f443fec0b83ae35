# cython: language_level=3
"""CPU feature detection, compiled ahead of time.

Fast kernels pick their instruction-set path at run time from these flags
(a wheel is built for a portable baseline, never ``-march=native``);
``lstminfer info`` prints them. The names are this architecture's: GCC's on
x86-64 (avx2, ..., avx512vnni), the Arm ARM's on aarch64 (asimd, fp16, dotprod =
sdot/udot, i8mm, bf16, sve).
"""

cdef extern from "li_cpu.h":
    int lstminfer_has(const char *name) nogil
    const char *LSTMINFER_ARCH
    const char *LSTMINFER_FEATURES

ARCH = LSTMINFER_ARCH.decode("ascii")
# This architecture's feature names, in the order kernels prefer them.
FEATURES = tuple(LSTMINFER_FEATURES.decode("ascii").split())


def features():
    """Dict feature -> bool for this CPU (empty on an architecture without detection)."""
    return {name: bool(lstminfer_has(name.encode("ascii"))) for name in FEATURES}


def arch():
    """"x86_64", "aarch64" or "other": the architecture this module was compiled for."""
    return ARCH


def is_x86():
    return ARCH == "x86_64"
