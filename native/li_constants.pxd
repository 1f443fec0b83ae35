# The numbers the native kernels share with the Python side, declared once.
#
# The recurrent kernels (_rnn_core.pxi) expose each group as a dict (PACKING, ACTIVATION_CODES,
# OPS, QKINDS, ACTS_PER_DIRECTION, GATES), and tests/test_native_layout.py checks them against
# lstminfer/kernels/packing.py, numba_math.py and cython_backend.py.

# Segments of a packed weight block per direction (packing.SEG_*); the kernels read three.
cdef enum:
    SEG_W = 0
    SEG_R = 1
    SEG_BIAS_X = 2
    SEG_BIAS_RH = 3
    SEG_PEEP = 4
    SEG_WT = 5
    SEG_RT = 6
    NUM_SEGMENTS = 7

# Floats every segment, panel set and scratch area is padded to (packing.ALIGN_FLOATS: 64 bytes).
cdef enum:
    ALIGN_FLOATS = 16

# Activation codes (numba_math.ACTIVATION_CODES).
cdef enum:
    RELU = 0
    TANH = 1
    SIGMOID = 2
    AFFINE = 3
    LEAKY_RELU = 4
    THRESHOLDED_RELU = 5
    SCALED_TANH = 6
    HARD_SIGMOID = 7
    ELU = 8
    SOFTSIGN = 9
    SOFTPLUS = 10

# Recurrent ops, with their gates (packing.GATES) and activations per direction
# (cython_backend.ACTS_PER_DIRECTION; each activation takes two floats, alpha and beta).
cdef enum:
    OP_LSTM = 0
    OP_GRU = 1
    OP_RNN = 2

cdef enum:
    GATES_LSTM = 4
    GATES_GRU = 3
    GATES_RNN = 1
    ACTS_LSTM = 3
    ACTS_GRU = 2
    ACTS_RNN = 1

# Weight storage of a kernel (Seq.qkind; cython_backend's precision names).
cdef enum:
    QK_FLOAT = 0  # float32 panels in pbuf
    QK_INT8 = 1  # int8 panels + column scales, dequantized in the product (weight-only)
    QK_VNNI = 2  # int8 VNNI panels + column scales, rows quantized per call (li_vnni.h)
    QK_BF16 = 3  # bf16 panels in qpbuf, no scales (weight-only)
