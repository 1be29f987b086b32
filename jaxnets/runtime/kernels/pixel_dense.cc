// A dense layer that reads uint8 pixels: out[n, o] = sum_k (x[n, k] * scale[k] + shift[k]) * w[k, o] + bias[o].
//
// Why (runtime/cpu.py, item 8): XLA:CPU hands the product to a library call that cannot fuse the uint8 ->
// float32 conversion, so a narrow first layer (logistic regression, the shallow net) writes and reads back
// the whole batch as float32 before a product that is itself memory-bound. Here each 16 pixels are
// converted in a register, scaled, and multiplied into the weights: the batch is read once, as bytes.
//
// Layout: x [N, K] uint8 (any trailing shape, flattened), scale/shift [K] (the spec's normalisation per
// input position) or [1] (one value for all), w [K, O] (Flax's kernel, not transposed), bias [O]; O divides 16. The positions are cut
// into chunks, the tasks split between the calling thread and XLA's intra-op pool (parallel.h): a chunk's
// weights are transposed in registers to one register per output and 16 positions, scaled, and kept in L1,
// so each row's 16 pixels cost one conversion and O multiply-adds; chunks' sums are added at the end. With few
// chunks (a small image) each chunk's rows are split too, each split transposing its chunk again.
// (Spreading each row's pixels over a position-major register instead took O permutations per row.)

// Its weight gradient, for training from pixels, reads the same bytes:
//   dw[k, o] = scale[k] * sum_n x[n, k] * g[n, o] + shift[k] * sum_n g[n, o]
// 16 input positions along the lanes, KB x O registers (KB blocks of 16 positions, O outputs); per batch row one
// conversion per block and one broadcast per output. Blocks of positions are split between the threads.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// 16 positions' scale (or shift) from k: loaded, or one value broadcast (step 0)
inline __m512 positions16(const float* v, int64_t k, int64_t step) {
  return step ? _mm512_loadu_ps(v + k) : _mm512_set1_ps(v[0]);
}

inline __m512 pixels16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

struct Problem {
  const uint8_t* x;
  const float* scale;
  const float* shift;
  int64_t step;  // 1: scale and shift per position; 0: one value each (a uniform normalisation, no [K] arrays)
  const float* w;
  float* partial;  // [chunks, N, O]: each chunk's sums over its positions, without the offset
  float* offset;   // [chunks, O]: each chunk's share of sum_k shift[k] * w[k, o]
  int64_t n, k;
};

// A chunk of positions is 16 KB of scaled, transposed weights: it stays in L1 while every row passes over it.
template <int O>
constexpr int64_t kChunk = 4096 / O;
template <int O>
constexpr int kRows = O <= 2 ? 8 : 16 / O;  // R x O accumulators: at most 16 registers

inline __m512i unzip_lanes(int odd) {  // the even (or odd) lanes of two registers, as one
  alignas(64) int32_t lanes[16];
  for (int l = 0; l < 16; ++l) lanes[l] = 2 * l + odd;
  return _mm512_load_si512(lanes);
}

// The 16 x O weights at one block of positions (w's layout, position-major) as O registers, register o holding
// output o's weights at the 16 positions: log2(O) rounds of unzipping pairs move the position index to the lanes.
template <int O>
inline void transpose_block(const float* w, __m512* t, __m512i evens, __m512i odds) {
  for (int m = 0; m < O; ++m) t[m] = _mm512_loadu_ps(w + 16 * m);
  for (int round = 1; round < O; round *= 2) {
    __m512 u[O];
    for (int i = 0; i < O / 2; ++i) {
      u[i] = _mm512_permutex2var_ps(t[2 * i], evens, t[2 * i + 1]);
      u[O / 2 + i] = _mm512_permutex2var_ps(t[2 * i], odds, t[2 * i + 1]);
    }
    for (int m = 0; m < O; ++m) t[m] = u[m];
  }
}

// Chunk c of the positions for rows [n0, n1): its weights are transposed and scaled once (and its share of the
// offset summed, by the task with the first rows), then each row's 16 pixels meet them in O multiply-adds with
// no shuffle.
template <int O>
void chunk_sums(const Problem& p, int64_t c, int64_t n0, int64_t n1) {
  constexpr int R = kRows<O>;
  const int64_t k0 = c * kChunk<O>, k1 = std::min(p.k, k0 + kChunk<O>), blocks = (k1 - k0) / 16;
  alignas(64) float scaled[kChunk<O> / 16][O][16];
  const __m512i evens = unzip_lanes(0), odds = unzip_lanes(1);
  __m512 off[O];
  for (int o = 0; o < O; ++o) off[o] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k = k0 + 16 * b;
    __m512 t[O];
    transpose_block<O>(p.w + k * O, t, evens, odds);
    const __m512 s = positions16(p.scale, k, p.step), h = positions16(p.shift, k, p.step);
    for (int o = 0; o < O; ++o) {
      off[o] = _mm512_fmadd_ps(h, t[o], off[o]);
      _mm512_store_ps(scaled[b][o], _mm512_mul_ps(t[o], s));
    }
  }
  float* part = p.partial + c * p.n * O;
  for (int64_t nb = n0; nb < n1; nb += R) {  // the last group repeats its last row, written once
    const uint8_t* row[R];
    __m512 acc[R][O];
    for (int r = 0; r < R; ++r) {
      row[r] = p.x + std::min(nb + r, n1 - 1) * p.k + k0;
      for (int o = 0; o < O; ++o) acc[r][o] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < blocks; ++b)
      for (int r = 0; r < R; ++r) {
        const __m512 xv = pixels16(row[r] + 16 * b);
        for (int o = 0; o < O; ++o) acc[r][o] = _mm512_fmadd_ps(xv, _mm512_load_ps(scaled[b][o]), acc[r][o]);
      }
    for (int r = 0; r < R && nb + r < n1; ++r)
      for (int o = 0; o < O; ++o) {
        float sum = _mm512_reduce_add_ps(acc[r][o]);
        for (int64_t k = k0 + 16 * blocks; k < k1; ++k) sum += row[r][k - k0] * p.scale[k * p.step] * p.w[k * O + o];
        part[(nb + r) * O + o] = sum;
      }
  }
  for (int o = 0; o < O && n0 == 0; ++o) {
    float sum = _mm512_reduce_add_ps(off[o]);
    for (int64_t k = k0 + 16 * blocks; k < k1; ++k) sum += p.shift[k * p.step] * p.w[k * O + o];
    p.offset[c * O + o] = sum;
  }
}

template <int O>
void pixel_dense(ffi::ThreadPool& pool, const Problem& p, const float* bias, float* y) {
  const int64_t chunks = std::max<int64_t>(1, (p.k + kChunk<O> - 1) / kChunk<O>);  // K = 0: one empty chunk
  std::vector<float> partial(chunks * p.n * O), offset(chunks * O);
  Problem q = p;
  q.partial = partial.data();
  q.offset = offset.data();
  // few chunks (a small image): their rows split too, so both cores have work; each split transposes again
  constexpr int64_t R = kRows<O>;
  const int64_t splits = std::clamp<int64_t>((8 + chunks - 1) / chunks, 1, (p.n + 4 * R - 1) / (4 * R));
  const int64_t per = ((p.n + splits - 1) / splits + R - 1) / R * R, tasks = chunks * ((p.n + per - 1) / per);
  jaxnets::parallel_tasks(pool, tasks, p.n * p.k * O >= jaxnets::kThreadedMacs, [q, chunks, per](int64_t t) {
    const int64_t n0 = t / chunks * per;
    chunk_sums<O>(q, t % chunks, n0, std::min(q.n, n0 + per));
  });
  for (int64_t o = 0; o < O; ++o) {
    float sum = bias[o];
    for (int64_t c = 0; c < chunks; ++c) sum += offset[c * O + o];
    for (int64_t n = 0; n < p.n; ++n) y[n * O + o] = sum;
  }
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t i = 0; i < p.n * O; ++i) y[i] += partial[c * p.n * O + i];
}

ffi::Error PixelDense(ffi::ThreadPool pool, ffi::Buffer<ffi::U8> x, ffi::Buffer<ffi::F32> scale,
                      ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                      ffi::ResultBuffer<ffi::F32> out) {
  const int64_t N = x.dimensions().size() ? x.dimensions()[0] : 0;
  const int64_t O = bias.element_count(), K = O > 0 ? w.element_count() / O : 0, step = scale.element_count() == 1 ? 0 : 1;
  if (w.element_count() != K * O || (N > 0 && x.element_count() != N * K) || out->element_count() != N * O ||
      (scale.element_count() != K && step) || shift.element_count() != scale.element_count() || O < 1 ||
      16 % O != 0)
    return ffi::Error::InvalidArgument("pixel_dense: shapes do not match x [N, K], w [K, O] with O dividing 16, "
                                       "scale and shift [K] or [1]");
  if (N == 0) return ffi::Error::Success();
  const Problem p{x.typed_data(), scale.typed_data(), shift.typed_data(), step, w.typed_data(), nullptr, nullptr, N, K};
  const float* b = bias.typed_data();
  float* y = out->typed_data();
  switch (O) {
    case 1: pixel_dense<1>(pool, p, b, y); break;
    case 2: pixel_dense<2>(pool, p, b, y); break;
    case 4: pixel_dense<4>(pool, p, b, y); break;
    case 8: pixel_dense<8>(pool, p, b, y); break;
    default: pixel_dense<16>(pool, p, b, y); break;
  }
  return ffi::Error::Success();
}

struct WeightGrad {
  const uint8_t* x;
  const float* g;
  const float* scale;
  const float* shift;
  int64_t step;  // as Problem's
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
    const __m512 s = positions16(p.scale, k0 + 16 * b, p.step), h = positions16(p.shift, k0 + 16 * b, p.step);
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
      p.dw[k * O + o] = sum * p.scale[k * p.step] + p.shift[k * p.step] * p.g_sum[o];
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
  const int64_t step = scale.element_count() == 1 ? 0 : 1;
  int64_t K = 1;  // x: [N, any trailing shape]
  for (size_t d = 1; d < x.dimensions().size(); ++d) K *= x.dimensions()[d];
  const int64_t O = N > 0 ? g.element_count() / N : dw->element_count() / std::max<int64_t>(K, 1);
  if ((N > 0 && (x.element_count() != N * K || g.element_count() != N * O)) || dw->element_count() != K * O ||
      (scale.element_count() != K && step) || shift.element_count() != scale.element_count() || O < 1 ||
      16 % O != 0)
    return ffi::Error::InvalidArgument("pixel_dense_weight_grad: shapes do not match x [N, K], g [N, O], "
                                       "dw [K, O]");
  float g_sum[16] = {};
  for (int64_t r = 0; r < N; ++r)
    for (int64_t o = 0; o < O; ++o) g_sum[o] += g.typed_data()[r * O + o];
  const WeightGrad p{x.typed_data(), g.typed_data(), scale.typed_data(), shift.typed_data(), step, g_sum,
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
