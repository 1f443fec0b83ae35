# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Recurrent kernels: the armv8.2-a (fp16, sdot/udot) build of the shared source _rnn_core.pxi.

lstminfer/kernels/cython_backend.py imports it only on an aarch64 CPU reporting asimd and dotprod.
"""
include "_rnn_core.pxi"
