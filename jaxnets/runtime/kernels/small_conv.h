// What jaxnets' small convolutions share (small_conv.cc, conv_input_grad.cc): the shape of a stride-1 VALID
// convolution, NHWC x HWIO, and the lane masks of at most 16 channels.

#pragma once

#include <immintrin.h>

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace jaxnets {

struct Shape {
  int64_t n, h, w, c, kh, kw, o, oh, ow;
  int64_t run() const { return kw * c; }  // one kernel row's inputs (kx, c), contiguous in x and in w
  int64_t macs() const { return n * oh * ow * kh * kw * c * o; }
};

inline __mmask16 out_lanes(int64_t o) { return static_cast<__mmask16>((1u << o) - 1u); }

inline xla::ffi::Error conv_shape(xla::ffi::Span<const int64_t> x, xla::ffi::Span<const int64_t> w,
                                  xla::ffi::Span<const int64_t> y, Shape* s) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4)
    return xla::ffi::Error::InvalidArgument("small_conv: x, w and y must be 4-d (NHWC, HWIO, NHWC)");
  *s = Shape{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2]};
  if (w[2] != s->c || s->o < 1 || s->o > 16 || s->kh < 1 || s->kw < 1 || s->oh != s->h - s->kh + 1 ||
      s->ow != s->w - s->kw + 1 || s->oh < 1 || s->ow < 1 || y[0] != s->n || y[3] != s->o)
    return xla::ffi::Error::InvalidArgument("small_conv: shapes are not a VALID stride-1 convolution with O <= 16");
  return xla::ffi::Error::Success();
}

}  // namespace jaxnets
