// Convolutions with 16·k output channels (any stride and padding), NHWC / HWIO, float32: the forward pass and
// the kernel's gradient of ResNet's, VGG's and AlexNet's layers (the input gradient is the forward over the
// output gradient with the kernel turned by 180 degrees, per phase where strided: native.wide_conv_input_grad).
//
// Why (runtime/cpu.py, item 10): XLA:CPU computes a kernel gradient as a convolution over an output-sized
// "window" after transposing the input channel-major and the gradient position-major, at 30-150 GFLOP/s (34 ms
// for ResNet-18's stem at batch 32, 128 px, 19 ms for each 64-channel layer of the first stage), and a
// 3-channel stem's forward at ~80 GFLOP/s; these kernels run at ~200-230 (Zen 4).
//
// For one kernel row ky the inputs (kx, c) of an output position are one contiguous run of KW*C floats of an
// input row, starting at column ox*S - Q.
//
// forward:     y[n, oy, ox, o] = sum_{ky, kx, c} x[n, oy*S + ky - P, ox*S + kx - Q, c] * w[ky, kx, c, o]
//   B consecutive positions of a row x up to four 16-float registers of outputs (B x OT accumulators); for each
//   input (ky, j) of the run OT loads of w and B broadcasts of x.
// weight grad: dw[ky, kx, c, o] = sum_{n, oy, ox} x[n, oy*S + ky - P, ox*S + kx - Q, c] * g[n, oy, ox, o]
//   dw's rows (ky, j = kx*C + c) taken R at a time against up to four registers of outputs (R x OT
//   accumulators), over a tile of output rows; for each position OT loads of g, R broadcasts of x. Where dw is
//   small beside the batch (to 128 channels at ResNet's sizes) the batch is cut into slices, each sums into its
//   own partial dw, the partials are added last; where it is large (256-512 channels, few positions; 8 partials
//   of a 3x3x512x512 dw are 75 MB) each task owns a region of dw (a kernel row, 64 outputs, a group of passes)
//   and sums it over the whole batch. Either way each value's order of sums does not depend on the threads.
// x is 0 outside the image: padding rows are skipped, padding columns contribute 0 * w (so with an infinite
// weight lax's outputs next to a padding row are NaN where these stay finite; every other value is lax's).

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sy, sx, py, px;
  int64_t run() const { return kw * c; }  // one kernel row's inputs (kx, c): contiguous in x and in dw
  int64_t rows() const { return kh * run(); }
  int64_t macs() const { return n * oh * ow * kh * kw * c * o; }
};

constexpr int kMaxRows = 6;     // rows of dw per block
constexpr int kMaxTiles = 4;    // 16-float registers of outputs per block (registers: 6 x 4 + 4 + 1)
constexpr int64_t kPositions = 256;  // output positions per tile, at least (64-512 measured: within 5 %)

// rows [j0, j0 + R) of kernel row ky, outputs [o0, o0 + 16*OT), over the output rows [r0, r1) of the batch
// (row r: image r / OH, row r % OH)
template <int R, int OT>
void block(const Geometry& s, const float* x, const float* g, float* partial, int64_t r0, int64_t r1, int64_t ky,
           int64_t j0, int64_t o0) {
  const int64_t c = s.c, o = s.o, ow = s.ow, sx = s.sx, span = s.w * c, step = sx * c;
  float* out = partial + (ky * s.run() + j0) * o + o0;
  __m512 acc[R][OT];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < OT; ++t) acc[r][t] = _mm512_loadu_ps(out + r * o + t * 16);
  }
  // columns whose run [ox*S*C - Q*C + j0, + R) lies inside the row: [lo, hi)
  const int64_t first = j0 - s.px * c;  // the run's offset in the row at ox = 0
  int64_t lo = first >= 0 ? 0 : (-first + step - 1) / step;
  int64_t hi = span - R - first >= 0 ? (span - R - first) / step + 1 : 0;
  lo = std::min(lo, ow), hi = std::max(lo, std::min(hi, ow));
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / s.oh, oy = row % s.oh, iy = oy * s.sy + ky - s.py;
    if (iy < 0 || iy >= s.h) continue;  // a padding row: zeros
    const float* xr = x + (n * s.h + iy) * span;  // the row; the run of column ox starts at ox * step + first
    const float* gr = g + (n * s.oh + oy) * ow * o + o0;
    auto edge = [&](int64_t ox) {  // a column whose run leaves the row: zeros there
      __m512 gv[OT];
#pragma GCC unroll 4
      for (int t = 0; t < OT; ++t) gv[t] = _mm512_loadu_ps(gr + ox * o + t * 16);
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const int64_t at = ox * step + first + r;
        const __m512 xv = _mm512_set1_ps(at >= 0 && at < span ? xr[at] : 0.0f);
#pragma GCC unroll 4
        for (int t = 0; t < OT; ++t) acc[r][t] = _mm512_fmadd_ps(xv, gv[t], acc[r][t]);
      }
    };
    for (int64_t ox = 0; ox < lo; ++ox) edge(ox);
    const float* xp = xr + (lo < hi ? lo * step + first : 0);  // inside the row whenever the loop below runs
    const float* gp = gr + lo * o;
    for (int64_t ox = lo; ox < hi; ++ox, xp += step, gp += o) {
      __m512 gv[OT];
#pragma GCC unroll 4
      for (int t = 0; t < OT; ++t) gv[t] = _mm512_loadu_ps(gp + t * 16);
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const __m512 xv = _mm512_set1_ps(xp[r]);
#pragma GCC unroll 4
        for (int t = 0; t < OT; ++t) acc[r][t] = _mm512_fmadd_ps(xv, gv[t], acc[r][t]);
      }
    }
    for (int64_t ox = hi; ox < ow; ++ox) edge(ox);
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < OT; ++t) _mm512_storeu_ps(out + r * o + t * 16, acc[r][t]);
  }
}

using Block = void (*)(const Geometry&, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                       int64_t);
template <int OT, int... R>
constexpr std::array<Block, sizeof...(R)> blocks_of(std::integer_sequence<int, R...>) {
  return {block<R + 1, OT>...};
}
template <int... T>
constexpr std::array<std::array<Block, kMaxRows>, sizeof...(T)> block_table(std::integer_sequence<int, T...>) {
  return {blocks_of<T + 1>(std::make_integer_sequence<int, kMaxRows>{})...};
}
constexpr auto kBlocks = block_table(std::make_integer_sequence<int, kMaxTiles>{});

int64_t passes_of(const Geometry& s) { return (s.run() + kMaxRows - 1) / kMaxRows; }  // blocks of rows per ky
int64_t tile_rows(const Geometry& s) { return std::max<int64_t>(1, (kPositions + s.ow - 1) / s.ow); }

// passes [p0, p1) over kernel row ky's inputs (R of the run each), outputs [o0, o0 + 16 * tiles), over the output
// rows [r0, r1), added into `out`
void kernel_row(const Geometry& s, const float* x, const float* g, float* out, int64_t r0, int64_t r1, int64_t ky,
                int64_t o0, int64_t p0, int64_t p1) {
  const int64_t run = s.run(), passes = passes_of(s), tiles = std::min<int64_t>(kMaxTiles, (s.o - o0) / 16);
  for (int64_t i = 0, j = 0; i < p1; ++i) {
    const int64_t size = (run - j) / (passes - i);
    if (i >= p0) kBlocks[tiles - 1][size - 1](s, x, g, out, r0, r1, ky, j, o0);
    j += size;
  }
}

// every row of dw for batch entries [n0, n1), added into `partial` [KH * KW * C, O]
void weight_grad_slice(const Geometry& s, const float* x, const float* g, float* partial, int64_t n0, int64_t n1) {
  const int64_t tile = tile_rows(s);
  for (int64_t r0 = n0 * s.oh; r0 < n1 * s.oh; r0 += tile) {
    const int64_t r1 = std::min(n1 * s.oh, r0 + tile);
    for (int64_t ky = 0; ky < s.kh; ++ky) {
      for (int64_t o0 = 0; o0 < s.o; o0 += 16 * kMaxTiles) {
        kernel_row(s, x, g, partial, r0, r1, ky, o0, 0, passes_of(s));
      }
    }
  }
}

// kernel row ky's passes [p0, p1), outputs [o0, o0 + 64) of dw, over the whole batch: written straight into dw
void weight_grad_region(const Geometry& s, const float* x, const float* g, float* dw, int64_t ky, int64_t o0,
                        int64_t p0, int64_t p1) {
  const int64_t tile = tile_rows(s), rows = s.n * s.oh;
  for (int64_t r0 = 0; r0 < rows; r0 += tile) kernel_row(s, x, g, dw, r0, std::min(rows, r0 + tile), ky, o0, p0, p1);
}

// ---- forward: y[n, oy, ox, o] = sum_{ky, kx, c} x[n, oy*S + ky - P, ox*S + kx - Q, c] * w[ky, kx, c, o]
// B consecutive output positions of a row x OT registers of outputs in B x OT accumulators; for each input
// (ky, j) of the run: OT loads of w, B broadcasts of x. A block whose runs leave the row takes zeros there.

constexpr int kMaxPositions = 6;  // positions per block (registers: 6 x 4 + 4 + 1)

template <int B, int OT, bool kEdge>
void forward_block(const Geometry& s, const float* x, const float* w, float* y, int64_t n, int64_t oy,
                   int64_t ox0, int64_t o0) {
  const int64_t c = s.c, o = s.o, run = s.run(), span = s.w * c, step = s.sx * c, first = ox0 * step - s.px * c;
  __m512 acc[B][OT];
#pragma GCC unroll 6
  for (int b = 0; b < B; ++b) {
#pragma GCC unroll 4
    for (int t = 0; t < OT; ++t) acc[b][t] = _mm512_setzero_ps();
  }
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    const int64_t iy = oy * s.sy + ky - s.py;
    if (iy < 0 || iy >= s.h) continue;  // a padding row: zeros
    const float* xr = x + (n * s.h + iy) * span;  // the block's runs start at xr + first + b * step
    const float* wr = w + ky * run * o + o0;
    for (int64_t j = 0; j < run; ++j) {
      __m512 wv[OT];
#pragma GCC unroll 4
      for (int t = 0; t < OT; ++t) wv[t] = _mm512_loadu_ps(wr + j * o + t * 16);
#pragma GCC unroll 6
      for (int b = 0; b < B; ++b) {
        const int64_t at = first + b * step + j;
        const __m512 xv = _mm512_set1_ps(!kEdge || (at >= 0 && at < span) ? xr[at] : 0.0f);
#pragma GCC unroll 4
        for (int t = 0; t < OT; ++t) acc[b][t] = _mm512_fmadd_ps(xv, wv[t], acc[b][t]);
      }
    }
  }
  float* out = y + ((n * s.oh + oy) * s.ow + ox0) * o + o0;
#pragma GCC unroll 6
  for (int b = 0; b < B; ++b) {
#pragma GCC unroll 4
    for (int t = 0; t < OT; ++t) _mm512_storeu_ps(out + b * o + t * 16, acc[b][t]);
  }
}

using ForwardBlock = void (*)(const Geometry&, const float*, const float*, float*, int64_t, int64_t, int64_t,
                              int64_t);
template <int OT, bool kEdge, int... B>
constexpr std::array<ForwardBlock, sizeof...(B)> forward_blocks_of(std::integer_sequence<int, B...>) {
  return {forward_block<B + 1, OT, kEdge>...};
}
template <bool kEdge, int... T>
constexpr std::array<std::array<ForwardBlock, kMaxPositions>, sizeof...(T)> forward_table(
    std::integer_sequence<int, T...>) {
  return {forward_blocks_of<T + 1, kEdge>(std::make_integer_sequence<int, kMaxPositions>{})...};
}
// [edge][tiles - 1][positions - 1]
constexpr std::array<std::array<std::array<ForwardBlock, kMaxPositions>, kMaxTiles>, 2> kForwardBlocks = {
    forward_table<false>(std::make_integer_sequence<int, kMaxTiles>{}),
    forward_table<true>(std::make_integer_sequence<int, kMaxTiles>{})};

// one output row (n, oy), every output channel
void forward_row(const Geometry& s, const float* x, const float* w, float* y, int64_t n, int64_t oy) {
  const int64_t c = s.c, span = s.w * c, step = s.sx * c, run = s.run();
  const int64_t blocks = (s.ow + kMaxPositions - 1) / kMaxPositions;
  for (int64_t o0 = 0; o0 < s.o; o0 += 16 * kMaxTiles) {
    const int64_t tiles = std::min<int64_t>(kMaxTiles, (s.o - o0) / 16);
    for (int64_t i = 0, ox0 = 0; i < blocks; ++i) {
      const int64_t size = (s.ow - ox0) / (blocks - i);
      const int64_t first = ox0 * step - s.px * c, last = first + (size - 1) * step + run;  // [first, last)
      kForwardBlocks[first < 0 || last > span][tiles - 1][size - 1](s, x, w, y, n, oy, ox0, o0);
      ox0 += size;
    }
  }
}

ffi::Error check(const Geometry& s, ffi::Span<const int64_t> w_dims) {
  if (w_dims[2] != s.c || s.o < 16 || s.o % 16 != 0 || s.sy < 1 || s.sx < 1 || s.py < 0 || s.px < 0 || s.kh < 1 ||
      s.kw < 1 || s.oh < 1 || s.ow < 1 || s.c < 1)
    return ffi::Error::InvalidArgument("wide_conv: shapes are not a convolution's input, output and kernel "
                                       "with a multiple of 16 outputs");
  return ffi::Error::Success();
}

ffi::Error WideConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::ResultBuffer<ffi::F32> y, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                           int64_t pad_left) {
  const auto xd = x.dimensions(), yd = y->dimensions(), wd = w.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("wide_conv: x, w and y must be 4-d (NHWC, HWIO, NHWC)");
  const Geometry s{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2],
                   stride_h, stride_w, pad_top, pad_left};
  if (yd[0] != s.n || yd[3] != s.o) return ffi::Error::InvalidArgument("wide_conv: y is not [N, OH, OW, O]");
  if (ffi::Error e = check(s, wd); e.failure()) return e;
  if (s.n == 0) return ffi::Error::Success();
  const float *xp = x.typed_data(), *wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t rows = s.n * s.oh;
  jaxnets::parallel_tasks(pool, rows, s.macs() >= jaxnets::kThreadedMacs, [=](int64_t r) {
    forward_row(s, xp, wp, yp, r / s.oh, r % s.oh);
  });
  return ffi::Error::Success();
}

ffi::Error WideConvWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                              ffi::ResultBuffer<ffi::F32> dw, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                              int64_t pad_left) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("wide_conv: x, g and dw must be 4-d (NHWC, NHWC, HWIO)");
  const Geometry s{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], gd[1], gd[2],
                   stride_h, stride_w, pad_top, pad_left};
  if (gd[0] != s.n || gd[3] != s.o) return ffi::Error::InvalidArgument("wide_conv: g is not [N, OH, OW, O]");
  if (ffi::Error e = check(s, wd); e.failure()) return e;
  const int64_t size = s.rows() * s.o;
  float* out = dw->typed_data();
  std::fill(out, out + size, 0.0f);
  if (s.n == 0) return ffi::Error::Success();
  const float *xp = x.typed_data(), *gp = g.typed_data();
  const bool threaded = s.macs() >= jaxnets::kThreadedMacs;
  const int64_t slices = std::min<int64_t>(s.n, 8);
  if (slices * size > s.n * (s.h * s.w * s.c + s.oh * s.ow * s.o)) {
    // dw is large beside the batch (ResNet's and VGG's 256- and 512-channel layers): slices' partials would cost
    // more than reading x and g once per region, so tasks are regions of dw (kernel row, 64 outputs, passes)
    const int64_t blocks = (s.o + 16 * kMaxTiles - 1) / (16 * kMaxTiles), passes = passes_of(s);
    const int64_t threads = threaded ? pool.num_threads() : 1;
    const int64_t groups = std::clamp<int64_t>((4 * threads + s.kh * blocks - 1) / (s.kh * blocks), 1, passes);
    jaxnets::parallel_tasks(pool, s.kh * blocks * groups, threaded, [=](int64_t t) {
      const int64_t region = t / groups, group = t % groups;
      weight_grad_region(s, xp, gp, out, region / blocks, (region % blocks) * 16 * kMaxTiles,
                         group * passes / groups, (group + 1) * passes / groups);
    });
    return ffi::Error::Success();
  }
  jaxnets::sum_batch_slices(pool, s.n, slices, 1, size, threaded, out,
                            [=](float* partial, int64_t n0, int64_t n1, int64_t) {
                              weight_grad_slice(s, xp, gp, partial, n0, n1);
                            });
  return ffi::Error::Success();
}

// Both handlers' arguments: the pool, two arrays in, one out, the geometry native.py's `_geometry` passes.
auto binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride_h")
      .Attr<int64_t>("stride_w")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_wide_conv_weight_grad, WideConvWeightGrad, binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_wide_conv_forward, WideConvForward, binding());
