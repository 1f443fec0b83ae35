# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Recurrent kernels: the armv8.2-a+i8mm (fp16, sdot/udot, smmla) build of the shared source _rnn_core.pxi.

lstminfer/kernels/cython_backend.py imports it only on an aarch64 CPU reporting asimd, fp16, dotprod and i8mm.
"""
include "_rnn_core.pxi"
