# cython: language_level=3
"""CPU feature detection, compiled ahead of time.

Fast kernels pick their instruction-set path at run time from these flags
(a wheel is built for a portable baseline, never ``-march=native``);
``lstminfer info`` prints them.
"""

cdef extern from *:
    """
    #include <string.h>
    /* __builtin_cpu_supports needs a literal, hence one line per feature. */
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int lstminfer_has(const char *name) {
        __builtin_cpu_init();
        if (!strcmp(name, "avx2")) return __builtin_cpu_supports("avx2");
        if (!strcmp(name, "fma")) return __builtin_cpu_supports("fma");
        if (!strcmp(name, "avx512f")) return __builtin_cpu_supports("avx512f");
        if (!strcmp(name, "avx512bw")) return __builtin_cpu_supports("avx512bw");
        if (!strcmp(name, "avx512vl")) return __builtin_cpu_supports("avx512vl");
        if (!strcmp(name, "avx512vnni")) return __builtin_cpu_supports("avx512vnni");
        if (!strcmp(name, "avx512bf16")) return __builtin_cpu_supports("avx512bf16");
        return 0;
    }
    #define LSTMINFER_X86 1
    #else
    static int lstminfer_has(const char *name) { (void)name; return 0; }
    #define LSTMINFER_X86 0
    #endif
    """
    int lstminfer_has(const char *name) nogil
    int LSTMINFER_X86

# Feature names as GCC spells them, in the order kernels prefer them.
FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16")


def features():
    """Dict feature -> bool for this CPU (all False off x86 or without GCC builtins)."""
    return {name: bool(lstminfer_has(name.encode("ascii"))) for name in FEATURES}


def is_x86():
    return bool(LSTMINFER_X86)
