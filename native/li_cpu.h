/* CPU feature detection at run time (lstminfer._native._cpu): kernels are built for a portable
   baseline plus one module per instruction set, and the CPU picks among them at load. */
#ifndef LI_CPU_H
#define LI_CPU_H

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

#endif
