# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Recurrent kernels: the AVX2+FMA build of the shared source _rnn_core.pxi.

lstminfer/kernels/cython_backend.py imports it only on a CPU with AVX2 and FMA.
"""
include "_rnn_core.pxi"
