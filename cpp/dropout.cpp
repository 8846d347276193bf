// dropout: inverted dropout with a mask drawn from a counter-based generator, so the mask
// depends only on (seed, element index): the same for any thread count, and reproducible.
#include "gemm.hpp"  // active_microkernel(): which instruction set is in use

#include <algorithm>
#include <cstring>
#include <omp.h>

namespace cnnfast {
namespace {

// SplitMix64 finaliser of (seed, i): a well-mixed 64-bit value per element.
inline std::uint64_t mix(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// mask[4g + j] for the whole groups g in [g0, g1): slice j of draw g against the threshold
// (integer work only; with AVX-512DQ the 64-bit multiplies vectorise, 8 draws at a time)
inline void mask_groups(std::uint8_t* mask, i64 g0, i64 g1, std::uint64_t seed, std::uint32_t threshold) {
  for (i64 g = g0; g < g1; ++g) {
    const std::uint64_t bits = mix(seed, std::uint64_t(g));
    for (int j = 0; j < 4; ++j) mask[4 * g + j] = (std::uint32_t(bits >> (16 * j)) & 0xFFFFu) >= threshold;
  }
}

#ifdef CNNFAST_HAVE_AVX512
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))
void mask_groups_avx512(std::uint8_t* mask, i64 g0, i64 g1, std::uint64_t seed, std::uint32_t threshold) {
  mask_groups(mask, g0, g1, seed, threshold);
}
#endif

}  // namespace

// x: [n] -> y: [n], mask: [n]. One 64-bit draw serves four elements: element i is kept when
// its 16-bit slice u_i of draw i/4 satisfies u_i >= p * 65536 (p is resolved to 1/65536).
void dropout_forward(float* y, std::uint8_t* mask, const float* x, i64 n, float p, std::uint64_t seed) {
  const std::uint32_t threshold = std::uint32_t(double(p) * 65536.0 + 0.5);  // 0..65536
  const i64 whole = n / 4;  // groups of four elements; a last partial one below
#ifdef CNNFAST_HAVE_AVX512
  const bool wide = std::strcmp(active_microkernel().name, "avx512") == 0;
#endif
  const int nt = std::max(1, threads_for(n * 4.0));  // ~16 integer operations a group
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), parts = omp_get_num_threads();
    const i64 g0 = whole * t / parts, g1 = whole * (t + 1) / parts;
#ifdef CNNFAST_HAVE_AVX512
    if (wide) mask_groups_avx512(mask, g0, g1, seed, threshold);
    else
#endif
      mask_groups(mask, g0, g1, seed, threshold);
  }
  if (n % 4) {
    const std::uint64_t bits = mix(seed, std::uint64_t(whole));
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
