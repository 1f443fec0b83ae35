# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Recurrent kernels (LSTM, GRU, RNN): the portable build of the shared source _rnn_core.pxi.

Compiled with the baseline flags of a distributed wheel; always importable.
"""
include "_rnn_core.pxi"
