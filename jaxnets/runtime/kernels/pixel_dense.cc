// A dense layer that reads uint8 pixels: out[n, o] = sum_k (x[n, k] * scale[k] + shift[k]) * w[k, o] + bias[o].
//
// Why (runtime/cpu.py, item 8): XLA:CPU hands the product to a library call that cannot fuse the uint8 ->
// float32 conversion, so a narrow first layer (logistic regression, the shallow net) writes and reads back
// the whole batch as float32 before a product that is itself memory-bound. Here each 16 pixels are
// converted in a register, scaled, and multiplied into the weights: the batch is read once, as bytes.
//
// Layout: x [N, K] uint8 (any trailing shape, flattened), scale/shift [K] (the spec's normalisation per
// input position), w [K, O] (Flax's kernel, not transposed), bias [O]; O divides 16. For O > 1 one
// 16-float load of w holds G = 16 / O input positions x O outputs, and each position's pixel is spread
// over its O lanes by a permutation; lane l of an accumulator belongs to output l % O.
// Rows are split between the calling thread and XLA's intra-op pool (parallel.h).
//
// Its weight gradient, for training from pixels, reads the same bytes:
//   dw[k, o] = scale[k] * sum_n x[n, k] * g[n, o] + shift[k] * sum_n g[n, o]
// 16 input positions along the lanes, KB x O registers (KB blocks of 16 positions, O outputs); per batch row one
// conversion per block and one broadcast per output. Blocks of positions are split between the threads.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline __m512 pixels16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

struct Problem {
  const uint8_t* x;
  const float* scale;
  const float* w;
  float* out;  // [N, O], the sums without the offset
  int64_t n, k, o;
};

template <int O>
__m512i spread_lanes(int m) {  // lane l of the m-th 16-float load of w belongs to input position m * G + l / O
  alignas(64) int32_t lanes[16];
  for (int l = 0; l < 16; ++l) lanes[l] = m * (16 / O) + l / O;
  return _mm512_load_si512(lanes);
}

// rows [n0, n1) of `p`, O outputs, R rows at a time (the last block repeats its last row, written once)
template <int O, int R>
void block_rows(const Problem& p, int64_t n0, int64_t n1) {
  constexpr int G = 16 / O;
  __m512i spread[O];
  for (int m = 0; m < O; ++m) spread[m] = spread_lanes<O>(m);
  const int64_t K = p.k, K16 = K / 16 * 16;
  for (int64_t nb = n0; nb < n1; nb += R) {
    const uint8_t* row[R];
    __m512 acc[R];
    for (int r = 0; r < R; ++r) {
      row[r] = p.x + std::min(nb + r, n1 - 1) * K;
      acc[r] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K16; k += 16) {
      const __m512 s = _mm512_loadu_ps(p.scale + k);
      __m512 xs[R];
      for (int r = 0; r < R; ++r) xs[r] = _mm512_mul_ps(pixels16(row[r] + k), s);
      for (int m = 0; m < O; ++m) {
        const __m512 wv = _mm512_loadu_ps(p.w + (k + m * G) * O);
        for (int r = 0; r < R; ++r) {
          const __m512 xv = O == 1 ? xs[r] : _mm512_permutexvar_ps(spread[m], xs[r]);
          acc[r] = _mm512_fmadd_ps(xv, wv, acc[r]);
        }
      }
    }
    for (int r = 0; r < R && nb + r < n1; ++r) {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, acc[r]);
      float sums[O] = {};
      for (int l = 0; l < 16; ++l) sums[l % O] += lanes[l];
      for (int64_t k = K16; k < K; ++k)
        for (int o = 0; o < O; ++o) sums[o] += row[r][k] * p.scale[k] * p.w[k * O + o];
      for (int o = 0; o < O; ++o) p.out[(nb + r) * O + o] = sums[o];
    }
  }
}

constexpr int64_t kRowsPerTask = 8;

void some_rows(const Problem& p, int64_t n0, int64_t n1) {
  switch (p.o) {
    case 1: return block_rows<1, 8>(p, n0, n1);
    case 2: return block_rows<2, 8>(p, n0, n1);
    case 4: return block_rows<4, 8>(p, n0, n1);
    case 8: return block_rows<8, 4>(p, n0, n1);
    default: return block_rows<16, 4>(p, n0, n1);
  }
}

// offset[o] = bias[o] + sum_k shift[k] * w[k, o]: the normalisation's shift, once per call
template <int O>
void offset_sums(const float* shift, const float* w, const float* bias, float* offset, int64_t K) {
  constexpr int G = 16 / O;
  const int64_t K16 = K / 16 * 16;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < K16; k += 16) {
    const __m512 sv = _mm512_loadu_ps(shift + k);
    for (int m = 0; m < O; ++m) {
      const __m512 xv = O == 1 ? sv : _mm512_permutexvar_ps(spread_lanes<O>(m), sv);
      acc = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + (k + m * G) * O), acc);
    }
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc);
  for (int o = 0; o < O; ++o) offset[o] = bias[o];
  for (int l = 0; l < 16; ++l) offset[l % O] += lanes[l];
  for (int64_t k = K16; k < K; ++k)
    for (int o = 0; o < O; ++o) offset[o] += shift[k] * w[k * O + o];
}

void offsets(const float* shift, const float* w, const float* bias, float* offset, int64_t K, int64_t O) {
  switch (O) {
    case 1: return offset_sums<1>(shift, w, bias, offset, K);
    case 2: return offset_sums<2>(shift, w, bias, offset, K);
    case 4: return offset_sums<4>(shift, w, bias, offset, K);
    case 8: return offset_sums<8>(shift, w, bias, offset, K);
    default: return offset_sums<16>(shift, w, bias, offset, K);
  }
}

ffi::Error PixelDense(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> x, ffi::Buffer<ffi::F32> scale,
                      ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                      ffi::ResultBuffer<ffi::F32> out) {
  const int64_t N = x.dimensions().size() ? x.dimensions()[0] : 0;
  const int64_t K = scale.element_count(), O = bias.element_count();
  if (w.element_count() != K * O || (N > 0 && x.element_count() != N * K) || out->element_count() != N * O ||
      shift.element_count() != K || O < 1 || 16 % O != 0)
    return ffi::Error::InvalidArgument("pixel_dense: shapes do not match x [N, K], w [K, O] with O dividing 16");
  if (N == 0) return ffi::Error::Success();
  const Problem p{x.typed_data(), scale.typed_data(), w.typed_data(), out->typed_data(), N, K, O};
  jaxnets::parallel_tasks(pool, (N + kRowsPerTask - 1) / kRowsPerTask, N * K * O >= jaxnets::kThreadedMacs,
                          [p](int64_t t) { some_rows(p, t * kRowsPerTask, std::min(p.n, (t + 1) * kRowsPerTask)); });
  float offset[16];
  offsets(shift.typed_data(), w.typed_data(), bias.typed_data(), offset, K, O);
  float* y = out->typed_data();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) y[n * O + o] += offset[o];
  return ffi::Error::Success();
}

struct WeightGrad {
  const uint8_t* x;
  const float* g;
  const float* scale;
  const float* shift;
  const float* g_sum;  // [O]: sum_n g[n, o]
  float* dw;
  int64_t n, K;
};

// dw rows [k0, k0 + 16 * KB), O outputs
template <int O, int KB>
void weight_grad_block(const WeightGrad& p, int64_t k0) {
  const uint8_t* x = p.x;
  const float* g = p.g;
  const int64_t n = p.n, K = p.K;
  __m512 acc[KB][O];
#pragma GCC unroll 16
  for (int b = 0; b < KB; ++b)
#pragma GCC unroll 16
    for (int o = 0; o < O; ++o) acc[b][o] = _mm512_setzero_ps();
  for (int64_t r = 0; r < n; ++r) {
    // 32 or more rows K bytes apart, each read 16 * KB bytes at a time: too many streams for the hardware
    // prefetcher, so each row's bytes a few blocks ahead are asked for here
    _mm_prefetch(reinterpret_cast<const char*>(x + r * K + k0 + 512), _MM_HINT_T0);
    __m512 xv[KB];
#pragma GCC unroll 16
    for (int b = 0; b < KB; ++b) xv[b] = pixels16(x + r * K + k0 + 16 * b);
#pragma GCC unroll 16
    for (int o = 0; o < O; ++o) {
      const __m512 gv = _mm512_set1_ps(g[r * O + o]);
#pragma GCC unroll 16
      for (int b = 0; b < KB; ++b) acc[b][o] = _mm512_fmadd_ps(xv[b], gv, acc[b][o]);
    }
  }
#pragma GCC unroll 16
  for (int b = 0; b < KB; ++b) {
    const __m512 s = _mm512_loadu_ps(p.scale + k0 + 16 * b), h = _mm512_loadu_ps(p.shift + k0 + 16 * b);
    alignas(64) float lanes[O][16];
#pragma GCC unroll 16
    for (int o = 0; o < O; ++o)
      _mm512_store_ps(lanes[o], _mm512_fmadd_ps(h, _mm512_set1_ps(p.g_sum[o]), _mm512_mul_ps(acc[b][o], s)));
    float* out = p.dw + (k0 + 16 * b) * O;
    for (int l = 0; l < 16; ++l)
      for (int o = 0; o < O; ++o) out[l * O + o] = lanes[o][l];
  }
}

template <int O>
constexpr int kGradBlocks = O >= 8 ? 1 : (O >= 4 ? 2 : 4);  // KB x O accumulators: at most 16 registers

template <int O>
void weight_grad_rows(const WeightGrad& p, int64_t k0, int64_t k1) {
  constexpr int64_t span = 16 * kGradBlocks<O>;
  int64_t k = k0;
  for (; k + span <= k1; k += span) weight_grad_block<O, kGradBlocks<O>>(p, k);
  for (; k + 16 <= k1; k += 16) weight_grad_block<O, 1>(p, k);
  for (; k < k1; ++k)  // the last K % 16 positions
    for (int o = 0; o < O; ++o) {
      float sum = 0.0f;
      for (int64_t r = 0; r < p.n; ++r) sum += p.x[r * p.K + k] * p.g[r * O + o];
      p.dw[k * O + o] = sum * p.scale[k] + p.shift[k] * p.g_sum[o];
    }
}

void weight_grad_some(const WeightGrad& p, int64_t O, int64_t k0, int64_t k1) {
  switch (O) {
    case 1: return weight_grad_rows<1>(p, k0, k1);
    case 2: return weight_grad_rows<2>(p, k0, k1);
    case 4: return weight_grad_rows<4>(p, k0, k1);
    case 8: return weight_grad_rows<8>(p, k0, k1);
    default: return weight_grad_rows<16>(p, k0, k1);
  }
}

ffi::Error PixelDenseWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> x, ffi::Buffer<ffi::F32> g,
                                ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                                ffi::ResultBuffer<ffi::F32> dw) {
  const int64_t N = x.dimensions().size() ? x.dimensions()[0] : 0;
  const int64_t K = scale.element_count();
  const int64_t O = N > 0 ? g.element_count() / N : dw->element_count() / std::max<int64_t>(K, 1);
  if ((N > 0 && (x.element_count() != N * K || g.element_count() != N * O)) || dw->element_count() != K * O ||
      shift.element_count() != K || O < 1 || 16 % O != 0)
    return ffi::Error::InvalidArgument("pixel_dense_weight_grad: shapes do not match x [N, K], g [N, O], "
                                       "dw [K, O]");
  float g_sum[16] = {};
  for (int64_t r = 0; r < N; ++r)
    for (int64_t o = 0; o < O; ++o) g_sum[o] += g.typed_data()[r * O + o];
  const WeightGrad p{x.typed_data(), g.typed_data(), scale.typed_data(), shift.typed_data(), g_sum,
                     dw->typed_data(), N, K};
  constexpr int64_t kPositionsPerTask = 1024;  // a multiple of every block span
  const int64_t tasks = (K + kPositionsPerTask - 1) / kPositionsPerTask;
  jaxnets::parallel_tasks(pool, tasks, N * K * O >= jaxnets::kThreadedMacs, [p, O, K](int64_t t) {
    weight_grad_some(p, O, t * kPositionsPerTask, std::min(K, (t + 1) * kPositionsPerTask));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_pixel_dense_weight_grad, PixelDenseWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_pixel_dense, PixelDense,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
