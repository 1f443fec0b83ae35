/* One recurrent node's call from a compiled program (lstminfer._native._runtime) into the kernel
   module (lstminfer._native._rnn_kernels*): raw pointers, no Python objects per call.
   X is C-contiguous [T, B, I] (time-major) or [B, T, I]; states and outputs may have any
   strides (in floats) as long as the hidden units are contiguous. */
#ifndef LI_CALL_H
#define LI_CALL_H
#include <Python.h>

typedef struct {
    const float *X;
    Py_ssize_t T, B;
    const int *lens;                   /* NULL: every sequence is T long */
    const float *h0;                   /* NULL: zeros */
    Py_ssize_t h0_d, h0_b;
    const float *c0;                   /* NULL: zeros (LSTM only) */
    Py_ssize_t c0_d, c0_b;
    float *Y;                          /* Y[t, d, b, :] at Y + t*y_t + d*y_d + b*y_b */
    Py_ssize_t y_t, y_d, y_b;
    float *Sh, *Sc;                    /* Y_h / Y_c [d, b, :] at + d*s_d + b*s_b; Sc NULL but for LSTM */
    Py_ssize_t s_d, s_b;
    /* Input projections looked up, not computed (a compiled program's Embedding fold): step t of
       batch row b takes row ids[t*ids_t + b*ids_b] (int32 or int64, negative from the end) of
       xtable [vocab, D, gates*H], the input bias included; X is then unused. NULL: X through W. */
    const float *xtable;
    Py_ssize_t vocab;
    const void *ids;
    int id_bytes;
    Py_ssize_t ids_t, ids_b;
} li_call;

#define LI_CALL_CAPSULE "lstminfer._native._rnn_kernels.call_kernel"

#endif
