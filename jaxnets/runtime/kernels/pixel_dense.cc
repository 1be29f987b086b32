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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxnets_pixel_dense, PixelDense,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
