// Small stride-1 VALID convolutions, NHWC, float32, at most 16 output channels: LeNet-5's layers.
//
// Why (runtime/cpu.py, item 9): XLA:CPU runs these at 18-41 GFLOP/s: the forward as a convolution its own
// emitted loops compute, the weight gradient as a convolution over a 28x28 "window" after transposing both
// operands channel-major. With at most 16 output channels one AVX-512 register holds every output channel of
// one position, so both are plain streams of broadcast-multiply-adds over NHWC data as it lies.
//
// conv_forward:     y[n, oy, ox, o] = sum_{ky, kx, c} x[n, oy + ky, ox + kx, c] * w[ky, kx, c, o]
//   B consecutive outputs of a row in B registers; for each kernel row the inputs (kx, c) are contiguous in x,
//   and so are the weights: one 16-float load of w per (ky, kx, c), B broadcasts of x.
// conv_weight_grad: dw[ky, kx, c, o] = sum_{n, oy, ox} x[n, oy + ky, ox + kx, c] * g[n, oy, ox, o]
//   R rows (ky, a run of (kx, c)) of dw in R registers; for each output position one load of g, R broadcasts
//   of x. The batch is cut into slices, each slice sums into its own partial dw, the partials are added last.
// conv_input_grad: conv_input_grad.cc.
// With one input channel (LeNet-5's first layer) O lanes of 16 would idle: the forward and the weight gradient
// put 16 consecutive outputs of a row along the lanes instead (one_channel_row, one_channel_weight_grad).
// Lanes beyond O (or beyond a row's end) are masked: never read, never written.

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "parallel.h"
#include "small_conv.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using jaxnets::conv_shape;
using jaxnets::out_lanes;
using jaxnets::Shape;

constexpr int kMaxBlock = 12;  // outputs of a row per block (registers: kMaxBlock accumulators + 1 weight)

template <int B>
void forward_block(const Shape& s, const float* x, const float* w, float* y, int64_t n, int64_t oy,
                   int64_t ox0) {
  // the shape read into locals: GCC otherwise keeps the accumulators in memory across the loop
  const int64_t run = s.run(), c = s.c, o = s.o, kh = s.kh;
  const __mmask16 m = out_lanes(o);
  __m512 acc[B];
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b) acc[b] = _mm512_setzero_ps();
  for (int64_t ky = 0; ky < kh; ++ky) {
    const float* xr = x + ((n * s.h + oy + ky) * s.w + ox0) * c;
    const float* wr = w + ky * run * o;
    for (int64_t j = 0; j < run; ++j) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, wr + j * o);
#pragma GCC unroll 16
      for (int b = 0; b < B; ++b) acc[b] = _mm512_fmadd_ps(_mm512_set1_ps(xr[b * c + j]), wv, acc[b]);
    }
  }
  float* yr = y + ((n * s.oh + oy) * s.ow + ox0) * o;
#pragma GCC unroll 16
  for (int b = 0; b < B; ++b) _mm512_mask_storeu_ps(yr + b * o, m, acc[b]);
}

using ForwardBlock = void (*)(const Shape&, const float*, const float*, float*, int64_t, int64_t, int64_t);
template <int... B>
constexpr auto forward_table(std::integer_sequence<int, B...>) {
  return std::array<ForwardBlock, sizeof...(B)>{forward_block<B + 1>...};
}
constexpr auto kForward = forward_table(std::make_integer_sequence<int, kMaxBlock>{});

// one output row, cut into near-equal blocks of at most kMaxBlock positions
void forward_row(const Shape& s, const float* x, const float* w, float* y, int64_t n, int64_t oy) {
  const int64_t blocks = (s.ow + kMaxBlock - 1) / kMaxBlock;
  for (int64_t i = 0, ox = 0; i < blocks; ++i) {
    const int64_t size = (s.ow - ox) / (blocks - i);
    kForward[size - 1](s, x, w, y, n, oy, ox);
    ox += size;
  }
}

// One input channel (LeNet-5's first layer): 16 consecutive outputs of a row along the lanes, one register per
// output channel, so every lane is used whatever O is; each tap is one load of the row and O multiply-adds with
// the tap's weights broadcast. The O registers are interleaved into NHWC through a small buffer.
template <int O>
void one_channel_row(const Shape& s, const float* x, const float* w, float* y, int64_t n, int64_t oy) {
  const int64_t kh = s.kh, kw = s.kw, ow = s.ow, iw = s.w;
  for (int64_t ox0 = 0; ox0 < ow; ox0 += 16) {
    const int64_t lanes = std::min<int64_t>(16, ow - ox0);
    const __mmask16 m = out_lanes(lanes);
    __m512 acc[O];
#pragma GCC unroll 16
    for (int o = 0; o < O; ++o) acc[o] = _mm512_setzero_ps();
    for (int64_t ky = 0; ky < kh; ++ky) {
      const float* xr = x + (n * s.h + oy + ky) * iw + ox0;
      const float* wr = w + ky * kw * O;
      for (int64_t kx = 0; kx < kw; ++kx) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, xr + kx);
#pragma GCC unroll 16
        for (int o = 0; o < O; ++o) acc[o] = _mm512_fmadd_ps(xv, _mm512_set1_ps(wr[kx * O + o]), acc[o]);
      }
    }
    alignas(64) float lanes_of[O][16];
#pragma GCC unroll 16
    for (int o = 0; o < O; ++o) _mm512_store_ps(lanes_of[o], acc[o]);
    float* yr = y + ((n * s.oh + oy) * ow + ox0) * O;
    for (int64_t l = 0; l < lanes; ++l)
#pragma GCC unroll 16
      for (int o = 0; o < O; ++o) yr[l * O + o] = lanes_of[o][l];
  }
}

using Row = void (*)(const Shape&, const float*, const float*, float*, int64_t, int64_t);
template <int... O>
constexpr auto one_channel_table(std::integer_sequence<int, O...>) {
  return std::array<Row, sizeof...(O)>{one_channel_row<O + 1>...};
}
constexpr auto kOneChannel = one_channel_table(std::make_integer_sequence<int, 16>{});

constexpr int kMaxRun = 16;  // rows of dw per pass (registers: kMaxRun accumulators + 1 gradient)

template <int R>
void weight_grad_rows(const Shape& s, const float* x, const float* g, float* partial, int64_t n0, int64_t n1,
                      int64_t ky, int64_t j0) {
  const int64_t c = s.c, o = s.o, oh = s.oh, ow = s.ow, row = s.w * c;  // locals, as in forward_block
  const __mmask16 m = out_lanes(o);
  __m512 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t oy = 0; oy < oh; ++oy) {
      const float* xp = x + (n * s.h + oy + ky) * row + j0;
      const float* gp = g + (n * oh + oy) * ow * o;
      for (int64_t ox = 0; ox < ow; ++ox, xp += c, gp += o) {
        const __m512 gv = _mm512_maskz_loadu_ps(m, gp);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xp[r]), gv, acc[r]);
      }
    }
  }
  float* out = partial + (ky * s.run() + j0) * 16;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * 16, acc[r]);
}

using WeightGradRows = void (*)(const Shape&, const float*, const float*, float*, int64_t, int64_t, int64_t,
                                int64_t);
template <int... R>
constexpr auto weight_grad_table(std::integer_sequence<int, R...>) {
  return std::array<WeightGradRows, sizeof...(R)>{weight_grad_rows<R + 1>...};
}
constexpr auto kWeightGrad = weight_grad_table(std::make_integer_sequence<int, kMaxRun>{});

// every row of dw for batch entries [n0, n1): partial [KH * KW * C, 16]
void weight_grad_slice(const Shape& s, const float* x, const float* g, float* partial, int64_t n0, int64_t n1) {
  const int64_t run = s.run(), passes = (run + kMaxRun - 1) / kMaxRun;
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    for (int64_t i = 0, j = 0; i < passes; ++i) {
      const int64_t size = (run - j) / (passes - i);
      kWeightGrad[size - 1](s, x, g, partial, n0, n1, ky, j);
      j += size;
    }
  }
}

// The weight gradient of one input channel, batch entries [n0, n1): like its forward, 16 consecutive outputs of a
// row along the lanes. The slice's rows of g are first turned channel-major (zero beyond each row's end); then
// for each kernel row ky and a few taps kx at a time, KX x O sums stay in registers over every row of the slice:
// per 16 outputs one shifted load of x per tap and one load of g per output channel. No lane idles whatever O is.
template <int O, int KX>
void one_channel_taps(const Shape& s, const float* x, const float* g_rows, float* partial, int64_t n0, int64_t n1,
                      int64_t ky, int64_t kx0) {
  const int64_t ow = s.ow, oh = s.oh, groups = (ow + 15) / 16, iw = s.w, ih = s.h;
  __m512 acc[KX][O];
#pragma GCC unroll 16
  for (int j = 0; j < KX; ++j)
#pragma GCC unroll 16
    for (int k = 0; k < O; ++k) acc[j][k] = _mm512_setzero_ps();
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t oy = 0; oy < oh; ++oy) {
      const float* xr = x + (n * ih + oy + ky) * iw + kx0;
      const float* gr = g_rows + ((n - n0) * oh + oy) * O * groups * 16;
      for (int64_t b = 0; b < groups; ++b) {
        const __mmask16 m = out_lanes(std::min<int64_t>(16, ow - 16 * b));
        __m512 xv[KX];
#pragma GCC unroll 16
        for (int j = 0; j < KX; ++j) xv[j] = _mm512_maskz_loadu_ps(m, xr + 16 * b + j);
#pragma GCC unroll 16
        for (int k = 0; k < O; ++k) {
          const __m512 gv = _mm512_loadu_ps(gr + (k * groups + b) * 16);
#pragma GCC unroll 16
          for (int j = 0; j < KX; ++j) acc[j][k] = _mm512_fmadd_ps(xv[j], gv, acc[j][k]);
        }
      }
    }
#pragma GCC unroll 16
  for (int j = 0; j < KX; ++j) {  // partial [KH * KW, 16]: lane o of each tap's row, as the other slices write
    alignas(64) float lanes[16] = {};
#pragma GCC unroll 16
    for (int k = 0; k < O; ++k) lanes[k] = _mm512_reduce_add_ps(acc[j][k]);
    _mm512_storeu_ps(partial + (ky * s.kw + kx0 + j) * 16, _mm512_load_ps(lanes));
  }
}

// a kernel row's taps from kx on: KX at a time while they fit, then fewer
template <int O, int KX>
void taps_from(const Shape& s, const float* x, const float* g_rows, float* partial, int64_t n0, int64_t n1,
               int64_t ky, int64_t kx) {
  for (; kx + KX <= s.kw; kx += KX) one_channel_taps<O, KX>(s, x, g_rows, partial, n0, n1, ky, kx);
  if constexpr (KX > 1) taps_from<O, KX - 1>(s, x, g_rows, partial, n0, n1, ky, kx);
}

template <int O>
void one_channel_weight_grad(const Shape& s, const float* x, const float* g, float* partial, int64_t n0,
                             int64_t n1) {
  constexpr int KX = std::max(1, std::min(5, 30 / O));  // KX x O sums: at most 30 registers
  const int64_t ow = s.ow, oh = s.oh, groups = (ow + 15) / 16;
  std::vector<float> g_rows(static_cast<size_t>((n1 - n0) * oh * O * groups * 16), 0.0f);
  for (int64_t r = 0; r < (n1 - n0) * oh; ++r) {
    const float* gr = g + (n0 * oh + r) * ow * O;
    float* out = g_rows.data() + r * O * groups * 16;
    for (int64_t ox = 0; ox < ow; ++ox)
      for (int k = 0; k < O; ++k) out[k * groups * 16 + ox] = gr[ox * O + k];
  }
  for (int64_t ky = 0; ky < s.kh; ++ky) taps_from<O, KX>(s, x, g_rows.data(), partial, n0, n1, ky, 0);
}

using Slice = void (*)(const Shape&, const float*, const float*, float*, int64_t, int64_t);
template <int... O>
constexpr auto one_channel_grad_table(std::integer_sequence<int, O...>) {
  return std::array<Slice, sizeof...(O)>{one_channel_weight_grad<O + 1>...};
}
constexpr auto kOneChannelGrad = one_channel_grad_table(std::make_integer_sequence<int, 16>{});

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  Shape s;
  if (ffi::Error e = conv_shape(x.dimensions(), w.dimensions(), y->dimensions(), &s); e.failure()) return e;
  if (s.n == 0) return ffi::Error::Success();
  const float *xd = x.typed_data(), *wd = w.typed_data();
  float* yd = y->typed_data();
  constexpr int64_t kRows = 2;
  const int64_t rows = s.n * s.oh;
  const Row row = s.c == 1 ? kOneChannel[s.o - 1] : forward_row;
  jaxnets::parallel_tasks(pool, (rows + kRows - 1) / kRows, s.macs() >= jaxnets::kThreadedMacs, [=](int64_t t) {
    for (int64_t r = t * kRows; r < std::min(rows, (t + 1) * kRows); ++r) row(s, xd, wd, yd, r / s.oh, r % s.oh);
  });
  return ffi::Error::Success();
}

ffi::Error ConvWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> dw) {
  Shape s;
  if (ffi::Error e = conv_shape(x.dimensions(), dw->dimensions(), g.dimensions(), &s); e.failure()) return e;
  const int64_t rows = s.kh * s.run();
  float* out = dw->typed_data();
  if (s.n == 0) {
    std::fill(out, out + rows * s.o, 0.0f);
    return ffi::Error::Success();
  }
  // slices of the batch: enough for two cores to balance, few enough that the partials stay small
  // (one channel: one image a slice, so its channel-major rows of g stay in L1 through every pass)
  const int64_t slices = s.c == 1 ? s.n : std::min<int64_t>(s.n, 8);
  const float *xd = x.typed_data(), *gd = g.typed_data();
  const auto slice = s.c == 1 ? kOneChannelGrad[s.o - 1] : weight_grad_slice;
  std::vector<float> lanes(static_cast<size_t>(rows * 16), 0.0f);  // dw with its outputs padded to 16 lanes
  jaxnets::sum_batch_slices(pool, s.n, slices, 1, rows * 16, s.macs() >= jaxnets::kThreadedMacs,
                            lanes.data(), [=](float* partial, int64_t n0, int64_t n1, int64_t) {
                              slice(s, xd, gd, partial, n0, n1);
                            });
  for (int64_t r = 0; r < rows; ++r) std::copy_n(lanes.data() + r * 16, s.o, out + r * s.o);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_conv_forward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_conv_weight_grad, ConvWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
