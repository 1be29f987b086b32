// The kernel gradient of a depthwise convolution (one k x k filter per channel; EfficientNet-Lite's), NHWC,
// float32, k = 3 or 5, any stride, zero padding on the low sides given (the high side implied by g's shape):
//
//   dw[dy, dx, c] = sum_{n, oy, ox} x[n, oy*S + dy - P, ox*S + dx - Q, c] * g[n, oy, ox, c]
//
// Why (models/depthwise.py): XLA:CPU runs this as one reduction over the whole batch per tap, at ~0.8 G
// multiply-adds/s; two thirds of a Lite0 train step went there. Here 16 channels go along the lanes and every tap
// of the filter keeps its own accumulator (k*k registers: 25 of 32 for k = 5), so one pass over the batch reads
// each output-gradient vector once and the k*k input vectors it meets from L1, with no horizontal sums.
// The batch is cut into slices (tasks with 16-channel blocks), each sums into its own partial dw; the partials are
// added last, in slice order, so the result does not depend on the thread count.
// x is 0 outside the image and is multiplied like lax's padded input (a padding row reads a row of zeros, a padding
// column a zero vector), so a non-finite g reaches every tap, as in lax and models/depthwise.py's reductions.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, k, oh, ow, s, py, px;
  int64_t macs() const { return n * oh * ow * k * k * c; }
};

// channels [c0, c0 + 16) (lanes beyond C masked off) of every tap, over batch entries [n0, n1), into
// partial [K*K, C]; `zeros` is a row of W*C zeros (+16) that stands for a padding row
template <int K>
void taps_block(const Geometry& s, const float* x, const float* g, const float* zeros, float* partial, int64_t c0,
                int64_t n0, int64_t n1) {
  const int64_t c = s.c, st = s.s, step = st * c;
  const __mmask16 m = static_cast<__mmask16>(c - c0 >= 16 ? 0xFFFF : (1u << (c - c0)) - 1);
  // output columns whose K input columns all lie inside the row: [lo, hi)
  int64_t lo = (s.px + st - 1) / st, hi = s.w - K + s.px >= 0 ? (s.w - K + s.px) / st + 1 : 0;
  lo = std::min(lo, s.ow), hi = std::max(lo, std::min(hi, s.ow));
  __m512 acc[K * K];
#pragma GCC unroll 25
  for (int t = 0; t < K * K; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t oy = 0; oy < s.oh; ++oy) {
      const float* rows[K];
#pragma GCC unroll 5
      for (int dy = 0; dy < K; ++dy) {
        const int64_t iy = oy * st + dy - s.py;
        rows[dy] = (iy >= 0 && iy < s.h ? x + (n * s.h + iy) * s.w * c : zeros) + c0;
      }
      const float* gr = g + (n * s.oh + oy) * s.ow * c + c0;
      auto edge = [&](int64_t ox) {  // some of this column's inputs are padding: zeros there
        const __m512 gv = _mm512_maskz_loadu_ps(m, gr + ox * c);
#pragma GCC unroll 5
        for (int dy = 0; dy < K; ++dy) {
#pragma GCC unroll 5
          for (int dx = 0; dx < K; ++dx) {
            const int64_t ix = ox * st + dx - s.px;
            const __m512 xv = ix >= 0 && ix < s.w ? _mm512_maskz_loadu_ps(m, rows[dy] + ix * c) : _mm512_setzero_ps();
            acc[dy * K + dx] = _mm512_fmadd_ps(xv, gv, acc[dy * K + dx]);
          }
        }
      };
      for (int64_t ox = 0; ox < lo; ++ox) edge(ox);
      for (int64_t ox = lo; ox < hi; ++ox) {
        const __m512 gv = _mm512_maskz_loadu_ps(m, gr + ox * c);
        const int64_t at = ox * step - s.px * c;  // >= 0 here
#pragma GCC unroll 5
        for (int dy = 0; dy < K; ++dy) {
#pragma GCC unroll 5
          for (int dx = 0; dx < K; ++dx) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, rows[dy] + at + dx * c);
            acc[dy * K + dx] = _mm512_fmadd_ps(xv, gv, acc[dy * K + dx]);
          }
        }
      }
      for (int64_t ox = hi; ox < s.ow; ++ox) edge(ox);
    }
  }
#pragma GCC unroll 25
  for (int t = 0; t < K * K; ++t) _mm512_mask_storeu_ps(partial + t * c + c0, m, acc[t]);
}

ffi::Error DepthwiseWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t stride, int64_t pad_top, int64_t pad_left) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("depthwise: x, g and dw must be 4-d (NHWC, NHWC, k x k x 1 x C)");
  const Geometry s{xd[0], xd[1], xd[2], xd[3], wd[0], gd[1], gd[2], stride, pad_top, pad_left};
  if (gd[0] != s.n || gd[3] != s.c || wd[1] != s.k || wd[2] != 1 || wd[3] != s.c || (s.k != 3 && s.k != 5) ||
      s.s < 1 || s.py < 0 || s.px < 0 || s.c < 1)
    return ffi::Error::InvalidArgument("depthwise: shapes are not a 3x3 or 5x5 depthwise convolution's input, "
                                       "output gradient and kernel");
  const int64_t size = s.k * s.k * s.c;
  float* out = dw->typed_data();
  std::fill(out, out + size, 0.0f);
  if (s.n == 0 || s.oh < 1 || s.ow < 1) return ffi::Error::Success();
  const int64_t blocks = (s.c + 15) / 16;
  const int64_t slices = std::min<int64_t>(s.n, std::max<int64_t>(2, 16 / blocks));
  std::vector<float> zeros(static_cast<size_t>(s.w * s.c + 16));
  const float *xp = x.typed_data(), *gp = g.typed_data(), *zp = zeros.data();
  const auto run = s.k == 3 ? taps_block<3> : taps_block<5>;
  jaxnets::sum_batch_slices(pool, s.n, slices, blocks, size, s.macs() >= jaxnets::kThreadedMacs,
                            out, [=](float* partial, int64_t n0, int64_t n1, int64_t block) {
                              run(s, xp, gp, zp, partial, block * 16, n0, n1);
                            });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_depthwise_weight_grad, DepthwiseWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
