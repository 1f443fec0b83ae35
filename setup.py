"""Build the Cython extensions in native/ as private modules of lstminfer."""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable flags only: a wheel must run on any x86-64; fast paths are chosen
# at run time by CPU feature (lstminfer._native._cpu), never by -march=native.
COMPILE_ARGS = ["-O3"]


def sanitizer_args() -> list[str]:
    """AddressSanitizer + UndefinedBehaviorSanitizer flags when LSTMINFER_SANITIZE=1 (tools/sanitize.sh).

    Compile and link flags alike; run the result with libasan preloaded into Python."""
    if os.environ.get("LSTMINFER_SANITIZE") != "1":
        return []
    return ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-g"]


SANITIZE_ARGS = sanitizer_args()
COMPILE_ARGS += SANITIZE_ARGS

# The recurrent kernels are built once per instruction set from one source
# (native/_rnn_core.pxi); lstminfer/kernels/cython_backend.py imports the
# build the CPU supports (LSTMINFER_PORTABLE=1 forces the baseline one).
# Only the modules named *_avx2/*_avx512 get those flags, and none is
# imported on a CPU without them.
RNN_ISA_ARGS = {
    "": [],
    "_avx2": ["-mavx2", "-mfma"],
    "_avx512": ["-mavx512f", "-mavx2", "-mfma", "-mprefer-vector-width=512"],
}

# Everything the recurrent kernels include: an edit to any of them rebuilds every ISA variant.
RNN_DEPENDS = ["native/_rnn_core.pxi", "native/li_constants.pxd", "native/li_no_complex_i.h", "native/li_simd.h",
               "native/li_gemm.h", "native/li_vmath.h", "native/li_cells.h", "native/li_math.h", "native/li_vnni.h",
               "native/li_workers.h", "native/li_call.h", "native/li_conv.h", "native/_conv.pxi"]

extensions = [
    Extension("lstminfer._native._cpu", ["native/_cpu.pyx"], depends=["native/li_cpu.h"], extra_compile_args=COMPILE_ARGS),
    # Model.run's per-call loop (feed checks, steps, output detaching) in C.
    Extension("lstminfer._native._runtime", ["native/_runtime.pyx"], include_dirs=[numpy.get_include()],
              depends=["native/_program.pxi", "native/li_call.h", "native/li_dense.h", "native/li_typed.h", "native/li_vector.h", "native/li_math.h"],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], extra_compile_args=COMPILE_ARGS),
    Extension("lstminfer._native._numba_entry", ["native/_numba_entry.pyx"], include_dirs=[numpy.get_include()], define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")], extra_compile_args=COMPILE_ARGS),  # Numba kernels' per-call path
] + [
    Extension(f"lstminfer._native._rnn_kernels{suffix}", [f"native/_rnn_kernels{suffix}.pyx"],
              include_dirs=[numpy.get_include()],  # outputs allocated through numpy's C API
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
              extra_compile_args=COMPILE_ARGS + flags, depends=RNN_DEPENDS)
    for suffix, flags in RNN_ISA_ARGS.items()
]

for extension in extensions:
    extension.extra_link_args += SANITIZE_ARGS

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
