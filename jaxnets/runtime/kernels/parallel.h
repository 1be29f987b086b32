// Work split between the calling thread and XLA's intra-op pool, shared by jaxnets' kernels.
//
// Tasks are claimed from an atomic counter in a job the helpers share (std::shared_ptr): a helper that starts
// late finds nothing left, touches nothing of the caller's and is never waited for, so a busy pool cannot
// deadlock a call. The caller waits only for tasks a running thread has claimed: a short spin, then yields.

#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jaxnets {

// Run body(t) for every t in [0, tasks): on helpers from `pool` too when `threaded`.
template <class Body>
void parallel_tasks(xla::ffi::ThreadPool& pool, int64_t tasks, bool threaded, Body body) {
  struct Job {
    Body body;
    int64_t tasks;
    std::atomic<int64_t> next{0}, done{0};
    Job(Body b, int64_t n) : body(b), tasks(n) {}
    void work() {
      for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
        body(t);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto job = std::make_shared<Job>(body, tasks);
  const int64_t helpers = threaded ? std::min<int64_t>(pool.num_threads(), tasks) - 1 : 0;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([job] { job->work(); });
  job->work();
  for (int spins = 0; job->done.load(std::memory_order_acquire) < job->tasks; ++spins) {
    if (spins < 4096) _mm_pause(); else std::this_thread::yield();
  }
}

// A sum over the batch cut into at most `wanted` slices of equal length: body(partial, n0, n1, part) adds entries
// [n0, n1) into its slice's own `size` zeroed floats, for each of `parts` parts (blocks of channels a task owns).
// The partials are then added into `out` in slice order, so no value's order of sums depends on the thread count.
template <class Body>
void sum_batch_slices(xla::ffi::ThreadPool& pool, int64_t n, int64_t wanted, int64_t parts, int64_t size,
                      bool threaded, float* out, Body body) {
  const int64_t per = (n + wanted - 1) / wanted, slices = (n + per - 1) / per;
  std::vector<float> partial(static_cast<size_t>(slices * size), 0.0f);
  float* pp = partial.data();
  parallel_tasks(pool, slices * parts, threaded, [=](int64_t t) {
    const int64_t slice = t / parts;
    body(pp + slice * size, slice * per, std::min(n, (slice + 1) * per), t % parts);
  });
  for (int64_t t = 0; t < slices; ++t) {
    const float* p = pp + t * size;
    for (int64_t i = 0; i < size; ++i) out[i] += p[i];
  }
}

// below ~2M multiply-adds a hand-off to another core costs more than that core gives (measured on pixel_dense)
constexpr int64_t kThreadedMacs = int64_t{1} << 21;

}  // namespace jaxnets
