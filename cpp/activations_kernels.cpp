// tanh and sigmoid over a block of floats, compiled once per instruction set: plain loops the
// compiler vectorises (std::tanh and std::exp are library calls, one element at a time: 30 ms
// for 2M elements where these take under 1 ms). Both come from one exp of a non-positive
// argument, e = exp(-|x|) or exp(-2|x|), so nothing overflows and no difference of nearly equal
// numbers loses digits (except tanh near 0, which takes its series instead). 0.47 and 0.37 ns an
// element on one AVX-512 core (2M elements; ReLU, memory-bound: 0.27), where std::tanh took 15.
#include <cstring>

#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {
namespace {

inline float from_bits(std::int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// exp(t) for t <= 0, within about 2 ulp down to t = -87.3 (exp: 1.2e-38, the smallest normal
// float), that value below (and for NaN: the callers put NaN back): t = n ln2 + r with
// |r| <= ln2 / 2 (ln2 in two parts, Cody and Waite), exp(r) by its Taylor series to r^7 / 7! (the
// next term is below 5e-9 of it), 2^n from its exponent bits.
inline float exp_nonpositive(float t) {
  const float tc = t > -87.3f ? t : -87.3f;  // (NaN: -87.3)
  const float magic = 12582912.0f;           // 1.5 * 2^23: adding it rounds to an integer
  const float n = (tc * 1.44269504088896341f + magic) - magic;
  const float r = (tc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * from_bits((std::int32_t(n) + 127) << 23);  // (n in [-126, 0])
}

}  // namespace

// y[i] = tanh(x[i]), i < n: tanh|x| = (1 - e) / (1 + e), e = exp(-2|x|), for |x| >= 0.3; below,
// x (1 - x^2/3 + 2x^4/15 - 17x^6/315 + 62x^8/2835 - 1382x^10/155925) (next term below 1e-9 of it)
void tanh_block(float* y, const float* x, i64 n) {
  for (i64 i = 0; i < n; ++i) {
    const float v = x[i], a = v < 0.0f ? -v : v;
    const float e = exp_nonpositive(-2.0f * a);
    const float far = (1.0f - e) / (1.0f + e);
    const float s = v * v;
    float p = -1382.0f / 155925.0f;
    p = p * s + 62.0f / 2835.0f;
    p = p * s - 17.0f / 315.0f;
    p = p * s + 2.0f / 15.0f;
    p = p * s - 1.0f / 3.0f;
    p = p * s + 1.0f;
    const float near = v * p;
    const float t = a < 0.3f ? near : (v < 0.0f ? -far : far);
    y[i] = v != v ? v : t;  // (NaN stays NaN)
  }
}

// y[i] = 1 / (1 + exp(-x[i])), i < n: r = 1 / (1 + e), e = exp(-|x|); r for x >= 0, e * r below
// (below x = -87.3, where the result is under 1.2e-38, 1.2e-38 rather than a subnormal or 0)
void sigmoid_block(float* y, const float* x, i64 n) {
  for (i64 i = 0; i < n; ++i) {
    const float v = x[i];
    const float e = exp_nonpositive(v < 0.0f ? v : -v);
    const float r = 1.0f / (1.0f + e);
    const float t = v >= 0.0f ? r : e * r;
    y[i] = v != v ? v : t;
  }
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
