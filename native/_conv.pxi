# Convolution and max pooling (native/li_conv.h), included by _rnn_core.pxi so that each ISA
# build has its own; lstminfer/kernels/conv_native.py packs the weights and the offsets.

cdef extern from "li_conv.h":
    const int LI_CONV_NR, LI_CONV_MR, LI_CONV_KC
    void li_conv(const float* x, idx N, idx G, idx Cg, const idx* ins, const idx* padded, const idx* begin,
                 const float* wpack, idx Mg, idx K, const idx* koff, const idx* pos, idx L,
                 const float* bias, int relu, float* y, float* scratch, float* panel, float* part) noexcept nogil
    void li_conv_max_pool(const float* x, idx N, idx G, idx Cg, const idx* ins, const idx* padded, const idx* begin,
                          const float* wpack, idx Mg, idx K, const idx* koff, const idx* pos, idx CH, idx CW,
                          idx ph, idx pw, idx segp, const float* bias, int relu, float* y, float* scratch,
                          float* panel, float* part, float* rows) noexcept nogil
    void li_max_pool2d(const float* x, idx P, idx H, idx W, float* y, idx OH, idx OW, idx kh, idx kw,
                       idx sh, idx sw, idx dh, idx dw, idx ph, idx pw, float* row) noexcept nogil

CONV_TILE = (LI_CONV_MR, LI_CONV_NR, LI_CONV_KC)  # (rows of W, output positions, panel rows) per micro-kernel call


def conv(const float[::1] x, idx N, idx G, idx Cg, const idx[::1] ins, const idx[::1] padded,
         const idx[::1] begin, const float[::1] wpack, idx Mg, const idx[::1] koff, const idx[::1] pos,
         const float[::1] bias, bint relu, float[::1] y, float[::1] scratch, float[::1] panel, float[::1] part):
    """y [N, G*Mg, L] = conv(x [N, G*Cg, *ins]) (li_conv); sizes checked so that no access leaves a buffer."""
    cdef idx K = koff.shape[0], L = pos.shape[0], i
    cdef idx in_size = ins[0] * ins[1] * ins[2], pad_size = padded[0] * padded[1] * padded[2]
    cdef idx blocks = (Mg + LI_CONV_MR - 1) // LI_CONV_MR
    if x.shape[0] != N * G * Cg * in_size or y.shape[0] != N * G * Mg * L:
        raise ValueError("conv: x or y size does not match the geometry")
    if wpack.shape[0] != G * blocks * K * LI_CONV_MR or (bias is not None and bias.shape[0] != G * Mg):
        raise ValueError("conv: packed weights or bias do not match the geometry")
    if scratch.shape[0] < G * Cg * pad_size or panel.shape[0] < min(K, LI_CONV_KC) * LI_CONV_NR \
            or part.shape[0] < blocks * LI_CONV_MR * LI_CONV_NR:
        raise ValueError("conv: scratch buffers too small")
    for i in range(3):
        if begin[i] < 0 or begin[i] + ins[i] > padded[i]:
            raise ValueError("conv: input does not fit its padding")
    for i in range(K):
        if koff[i] < 0 or koff[i] + (pos[L - 1] if L else 0) >= Cg * pad_size:
            raise ValueError("conv: column offsets leave the padded input")
    cdef const float* b = &bias[0] if bias is not None else NULL
    if N == 0 or L == 0 or Mg == 0:
        return
    with nogil:
        li_conv(&x[0], N, G, Cg, &ins[0], &padded[0], &begin[0], &wpack[0], Mg, K, &koff[0], &pos[0], L,
                b, relu, &y[0], &scratch[0], &panel[0], &part[0])


def conv_max_pool(const float[::1] x, idx N, idx G, idx Cg, const idx[::1] ins, const idx[::1] padded,
                  const idx[::1] begin, const float[::1] wpack, idx Mg, const idx[::1] koff, const idx[::1] pos,
                  idx CH, idx CW, idx ph, idx pw, idx segp, const float[::1] bias, bint relu, float[::1] y,
                  float[::1] scratch, float[::1] panel, float[::1] part, float[::1] rows):
    """y [N, G*Mg, CH/ph, CW/pw] = MaxPool(ph x pw, stride = kernel)(conv(x)) (li_conv_max_pool): the
    conv's CH x CW output positions are ``pos``; sizes checked so that no access leaves a buffer."""
    cdef idx K = koff.shape[0], L = pos.shape[0], i
    cdef idx in_size = ins[0] * ins[1] * ins[2], pad_size = padded[0] * padded[1] * padded[2]
    cdef idx blocks = (Mg + LI_CONV_MR - 1) // LI_CONV_MR
    if min(ph, pw, segp) < 1 or CH < 0 or CW < 0 or CH * CW != L:
        raise ValueError("conv_max_pool: bad pool window or conv output size")
    cdef idx OH = CH // ph, OW = CW // pw
    if x.shape[0] != N * G * Cg * in_size or y.shape[0] != N * G * Mg * OH * OW:
        raise ValueError("conv_max_pool: x or y size does not match the geometry")
    if wpack.shape[0] != G * blocks * K * LI_CONV_MR or (bias is not None and bias.shape[0] != G * Mg):
        raise ValueError("conv_max_pool: packed weights or bias do not match the geometry")
    if scratch.shape[0] < G * Cg * pad_size or panel.shape[0] < min(K, LI_CONV_KC) * LI_CONV_NR \
            or part.shape[0] < blocks * LI_CONV_MR * LI_CONV_NR or rows.shape[0] < Mg * ph * min(segp, OW) * pw:
        raise ValueError("conv_max_pool: scratch buffers too small")
    for i in range(3):
        if begin[i] < 0 or begin[i] + ins[i] > padded[i]:
            raise ValueError("conv_max_pool: input does not fit its padding")
    for i in range(K):
        if koff[i] < 0 or koff[i] + (pos[L - 1] if L else 0) >= Cg * pad_size:
            raise ValueError("conv_max_pool: column offsets leave the padded input")
    cdef const float* b = &bias[0] if bias is not None else NULL
    if N == 0 or OH == 0 or OW == 0 or Mg == 0:
        return
    with nogil:
        li_conv_max_pool(&x[0], N, G, Cg, &ins[0], &padded[0], &begin[0], &wpack[0], Mg, K, &koff[0], &pos[0],
                         CH, CW, ph, pw, segp, b, relu, &y[0], &scratch[0], &panel[0], &part[0], &rows[0])


def max_pool2d(const float[::1] x, idx P, idx H, idx W, float[::1] y, idx OH, idx OW, idx kh, idx kw,
               idx sh, idx sw, idx dh, idx dw, idx ph, idx pw, float[::1] row):
    """y [P, OH, OW] = MaxPool of planes x [P, H, W] (li_max_pool2d); ``row``: scratch of the windows' width."""
    if x.shape[0] != P * H * W or y.shape[0] != P * OH * OW:
        raise ValueError("max_pool2d: sizes do not match")
    if min(kh, kw, sh, sw, dh, dw) < 1 or ph < 0 or pw < 0:
        raise ValueError("max_pool2d: bad window")
    if OW > 0 and row.shape[0] < (OW - 1) * sw + (kw - 1) * dw + 1:
        raise ValueError("max_pool2d: row scratch too small")
    if P == 0 or OH == 0 or OW == 0:
        return
    with nogil:
        li_max_pool2d(&x[0], P, H, W, &y[0], OH, OW, kh, kw, sh, sw, dh, dw, ph, pw, &row[0])
