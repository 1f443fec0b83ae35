/* CPU feature detection at run time (lstminfer._native._cpu): kernels are built for a portable
   baseline plus one module per instruction set, and the CPU picks among them at load.
   x86: GCC's __builtin_cpu_supports; aarch64 Linux: the kernel's HWCAP bits (getauxval). */
#ifndef LI_CPU_H
#define LI_CPU_H

#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LSTMINFER_ARCH "x86_64"
/* Feature names as GCC spells them, in the order kernels prefer them. */
#define LSTMINFER_FEATURES "avx2 fma avx512f avx512bw avx512vl avx512vnni avx512bf16"
/* __builtin_cpu_supports needs a literal, hence one line per feature. */
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
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define LSTMINFER_ARCH "aarch64"
/* Feature names as the Arm ARM spells them (/proc/cpuinfo: asimd, fphp+asimdhp, asimddp, i8mm, bf16, sve). */
#define LSTMINFER_FEATURES "asimd fp16 dotprod i8mm bf16 sve"
/* The kernel's bits (arch/arm64/include/uapi/asm/hwcap.h), spelled out for older libc headers. */
#define LI_HWCAP_FPHP (1UL << 9)
#define LI_HWCAP_ASIMD (1UL << 1)
#define LI_HWCAP_ASIMDHP (1UL << 10)
#define LI_HWCAP_ASIMDDP (1UL << 20)
#define LI_HWCAP_SVE (1UL << 22)
#define LI_HWCAP2_I8MM (1UL << 13)
#define LI_HWCAP2_BF16 (1UL << 14)
#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif
static int lstminfer_has(const char *name) {
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (!strcmp(name, "asimd")) return (hw & LI_HWCAP_ASIMD) != 0;
    if (!strcmp(name, "fp16")) return (hw & LI_HWCAP_FPHP) && (hw & LI_HWCAP_ASIMDHP);
    if (!strcmp(name, "dotprod")) return (hw & LI_HWCAP_ASIMDDP) != 0;
    if (!strcmp(name, "sve")) return (hw & LI_HWCAP_SVE) != 0;
    if (!strcmp(name, "i8mm")) return (hw2 & LI_HWCAP2_I8MM) != 0;
    if (!strcmp(name, "bf16")) return (hw2 & LI_HWCAP2_BF16) != 0;
    return 0;
}
#else
#define LSTMINFER_ARCH "other"
#define LSTMINFER_FEATURES ""
static int lstminfer_has(const char *name) { (void)name; return 0; }
#endif

#endif
