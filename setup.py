"""Build the Cython extensions in native/ as private modules of lstminfer."""
from Cython.Build import cythonize
from setuptools import Extension, setup

# Portable flags only: a wheel must run on any x86-64; fast paths are chosen
# at run time by CPU feature (lstminfer._cpu), never by -march=native.
COMPILE_ARGS = ["-O3"]

extensions = [
    Extension("lstminfer._cpu", ["native/_cpu.pyx"], extra_compile_args=COMPILE_ARGS),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
