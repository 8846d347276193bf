// dropout: inverted dropout with a mask drawn from a counter-based generator, so the mask
// depends only on (seed, element index): the same for any thread count, and reproducible.
#include <algorithm>

#include "dropout_rng.hpp"
#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {

// x: [n] -> y: [n], mask: [n]. One 64-bit draw serves four elements: element i is kept when
// its 16-bit slice u_i of draw i/4 satisfies u_i >= p * 65536 (p is resolved to 1/65536).
void dropout_forward(float* y, std::uint8_t* mask, const float* x, i64 n, float p, std::uint64_t seed) {
  const std::uint32_t threshold = std::uint32_t(double(p) * 65536.0 + 0.5);  // 0..65536
  const i64 whole = n / 4;                                    // groups of four elements; a last partial one below
  const auto mask_groups = active_isa().dropout_mask_groups;  // dropout_mask.cpp, per ISA
  const int nt = std::max(1, threads_for(n * 4.0));           // ~16 integer operations a group
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), parts = omp_get_num_threads();
    const i64 g0 = whole * t / parts, g1 = whole * (t + 1) / parts;
    mask_groups(mask, g0, g1, seed, threshold);
  }
  if (n % 4) {
    const std::uint64_t bits = dropout_mix(seed, std::uint64_t(whole));
    for (i64 i = 4 * whole; i < n; ++i)
      mask[i] = (std::uint32_t(bits >> (16 * (i - 4 * whole))) & 0xFFFFu) >= threshold;
  }
  dropout_backward(y, mask, x, n, p);  // then y = x * mask / (1 - p), a vectorised select
}

// dy, mask: [n] -> dx: [n] = dy * mask / (1 - p)
void dropout_backward(float* dx, const std::uint8_t* mask, const float* dy, i64 n, float p) {
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for num_threads(threads_for(n / 16.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const float g = dy[i] * scale;  // loaded unconditionally, so the select vectorises
    dx[i] = mask[i] ? g : 0.0f;
  }
}

}  // namespace cnnfast
