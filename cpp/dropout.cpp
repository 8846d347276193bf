// dropout: inverted dropout with a mask drawn from a counter-based generator, so the mask
// depends only on (seed, element index): the same for any thread count, and reproducible.
#include "kernels.hpp"

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

// x: [n] -> y: [n], mask: [n]; element i is kept when its uniform draw u_i >= p
void dropout_forward(float* y, std::uint8_t* mask, const float* x, i64 n, float p, std::uint64_t seed) {
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  const double threshold = double(p);
#pragma omp parallel for num_threads(threads_for(n / 4.0)) schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const double u = double(mix(seed, std::uint64_t(i)) >> 11) * 0x1.0p-53;  // uniform in [0, 1)
    const bool keep = u >= threshold;
    mask[i] = keep;
    y[i] = keep ? x[i] * scale : 0.0f;
  }
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
