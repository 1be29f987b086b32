// The input gradient of a small convolution (small_conv.cc: stride 1, VALID, NHWC, float32, <= 16 outputs):
//   dx[n, iy, ix, c] = sum_{ky, kx, o} g[n, iy - ky, ix - kx, o] * w[ky, kx, c, o]
// scattered from each output position rather than gathered over a zero-padded g: a gather with the outputs
// along the lanes met the padding in half of LeNet-5's second layer's multiply-adds and needed a horizontal sum
// per input value. Images are the parallel tasks (their dx are disjoint). Only real taps are summed, so a
// non-finite weight reaches the inputs its tap meets (lax, over zero padding, makes its channel NaN).

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

// The input gradient of image n, scattered: each output position's O gradients times the kernel, as one row of
// "columns" (ky, kx, c) along the lanes (wt is the kernel turned output-major: [O, KH * KW * C], zero-padded to
// whole registers), then each kernel row's run of KW * C columns added into dx where it lies (contiguous).
// Every multiply-add meets a real gradient: none of the zero padding a gather over padded g would read.
constexpr int kColumnRegisters = 12;  // registers of columns per pass, for each of two positions

// R registers of columns for P neighbouring output positions (their gradients P * O apart): each load of the
// kernel serves P broadcast-multiply-adds
template <int R, int P>
void column_pass(const float* gv, int64_t o, const float* wt, int64_t cols16, float* col) {
  __m512 acc[P][R];
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) acc[p][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < o; ++k) {
    __m512 gk[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) gk[p] = _mm512_set1_ps(gv[p * o + k]);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      __m512 wv = _mm512_loadu_ps(wt + k * cols16 + 16 * r);
      asm("" : "+v"(wv));  // one load for the P multiply-adds (GCC would fold it into each of them)
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) acc[p][r] = _mm512_fmadd_ps(gk[p], wv, acc[p][r]);
    }
  }
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) _mm512_store_ps(col + (p * kColumnRegisters + r) * 16, acc[p][r]);
}

using ColumnPass = void (*)(const float*, int64_t, const float*, int64_t, float*);
template <int P, int... R>
constexpr auto column_table(std::integer_sequence<int, R...>) {
  return std::array<ColumnPass, sizeof...(R)>{column_pass<R + 1, P>...};
}
constexpr auto kColumnPairs = column_table<2>(std::make_integer_sequence<int, kColumnRegisters>{});
constexpr auto kColumnSingles = column_table<1>(std::make_integer_sequence<int, kColumnRegisters>{});

// How one pass's columns [j0, j1) of `pair` neighbouring positions (ox, ox + 1) go into dx, kernel row by kernel
// row, as pieces of at most 16 dx values: the same for every position, so worked out once per call. A pair's runs
// overlap in dx but for C values, so the two are added together first and dx is read and written once (not
// twice, the second read waiting on the first write).
struct Piece {
  int64_t dx, first, second;  // dx from position (oy, ox); the two positions' columns in the pass's buffer
  __mmask16 all, of_first, of_second;
};

std::vector<Piece> scatter_pieces(const Shape& s, int64_t pair, int64_t j0, int64_t j1) {
  const int64_t c = s.c, run = s.run();
  std::vector<Piece> pieces;
  for (int64_t j = j0; j < j1;) {
    const int64_t ky = j / run, end = std::min(j1, (ky + 1) * run), len = end - j;
    const int64_t span = len + (pair - 1) * c;  // dx values written: the first's run, and the second's C more
    for (int64_t i = 0; i < span; i += 16) {
      const __mmask16 all = out_lanes(std::min<int64_t>(16, span - i));
      const __mmask16 first = all & out_lanes(std::clamp<int64_t>(len - i, 0, 16));
      // lane l holds the second's column i + l - c, for l in [c - i, len + c - i)
      const __mmask16 second = pair == 2 ? static_cast<__mmask16>(all & ~out_lanes(std::clamp<int64_t>(c - i, 0, 16)))
                                         : 0;
      pieces.push_back({ky * s.w * c + (j - ky * run) + i, (j - j0) + i,
                        kColumnRegisters * 16 + (j - j0) + i - c, all, first, second});
    }
    j = end;
  }
  return pieces;
}

void input_grad_image(const Shape& s, const float* g, const float* wt, int64_t cols16,
                      const std::vector<Piece>* pieces, float* dx, int64_t n) {
  const int64_t o = s.o;
  float* image = dx + n * s.h * s.w * s.c;
  std::fill(image, image + s.h * s.w * s.c, 0.0f);
  alignas(64) float col[2 * kColumnRegisters * 16];
  for (int64_t oy = 0; oy < s.oh; ++oy)
    for (int64_t ox = 0; ox < s.ow; ox += 2) {
      const int64_t pair = std::min<int64_t>(2, s.ow - ox);
      const float* gv = g + ((n * s.oh + oy) * s.ow + ox) * o;
      float* at = image + (oy * s.w + ox) * s.c;
      for (int64_t j0 = 0, pass = 0; j0 < cols16; j0 += 16 * kColumnRegisters, ++pass) {
        const int64_t regs = std::min<int64_t>(kColumnRegisters, (cols16 - j0) / 16);
        (pair == 2 ? kColumnPairs : kColumnSingles)[regs - 1](gv, o, wt + j0, cols16, col);
        for (const Piece& q : pieces[2 * pass + pair - 1]) {
          __m512 sum = _mm512_maskz_loadu_ps(q.of_first, col + q.first);
          if (pair == 2) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(q.of_second, col + q.second));
          _mm512_mask_storeu_ps(at + q.dx, q.all, _mm512_add_ps(_mm512_maskz_loadu_ps(q.all, at + q.dx), sum));
        }
      }
    }
}

ffi::Error ConvInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx) {
  Shape s;
  if (ffi::Error e = conv_shape(dx->dimensions(), w.dimensions(), g.dimensions(), &s); e.failure()) return e;
  if (s.n == 0) return ffi::Error::Success();
  const int64_t cols = s.kh * s.run(), cols16 = (cols + 15) / 16 * 16;
  std::vector<float> wt(static_cast<size_t>(s.o * cols16), 0.0f);  // [O, columns]: the kernel output-major
  const float* wd = w.typed_data();
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t k = 0; k < s.o; ++k) wt[k * cols16 + j] = wd[j * s.o + k];
  std::vector<std::vector<Piece>> pieces;  // [pass][pair - 1]
  for (int64_t j0 = 0; j0 < cols16; j0 += 16 * kColumnRegisters)
    for (int64_t pair = 1; pair <= 2; ++pair)
      pieces.push_back(scatter_pieces(s, pair, j0, std::min(cols, j0 + 16 * kColumnRegisters)));
  const float *gd = g.typed_data(), *wtd = wt.data();
  const std::vector<Piece>* pd = pieces.data();
  float* xd = dx->typed_data();
  jaxnets::parallel_tasks(pool, s.n, s.macs() >= jaxnets::kThreadedMacs,
                          [=](int64_t n) { input_grad_image(s, gd, wtd, cols16, pd, xd, n); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_conv_input_grad, ConvInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
