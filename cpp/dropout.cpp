// dropout: inverted dropout with a mask drawn from a counter-based generator, so the mask
// depends only on (seed, element index): the same for any thread count, and reproducible.
#include "kernels.hpp"

#include <algorithm>

namespace cnnfast {
namespace {

// SplitMix64 finaliser of (seed, i): a well-mixed 64-bit value per element.
inline std::uint64_t mix(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

// x: [n] -> y: [n], mask: [n]. One 64-bit draw serves four elements: element i is kept when
// its 16-bit slice u_i of draw i/4 satisfies u_i >= p * 65536 (p is resolved to 1/65536).
void dropout_forward(float* y, std::uint8_t* mask, const float* x, i64 n, float p, std::uint64_t seed) {
  const std::uint32_t threshold = std::uint32_t(double(p) * 65536.0 + 0.5);  // 0..65536
  const i64 groups = (n + 3) / 4;
#pragma omp parallel for num_threads(threads_for(n / 4.0)) schedule(static)
  for (i64 g = 0; g < groups; ++g) {  // integer work only: the mask
    const std::uint64_t bits = mix(seed, std::uint64_t(g));
    const i64 end = std::min<i64>(n, 4 * g + 4);
    for (i64 i = 4 * g; i < end; ++i)
      mask[i] = (std::uint32_t(bits >> (16 * (i - 4 * g))) & 0xFFFFu) >= threshold;
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
