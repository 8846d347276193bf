// dropout's mask, compiled once per instruction set (integer work only; with AVX-512DQ the
// 64-bit multiplies vectorise, 8 draws at a time).
#include "dropout_rng.hpp"
#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// mask[4g + j] for the whole groups g in [g0, g1): slice j of draw g against the threshold
void dropout_mask_groups(std::uint8_t* mask, i64 g0, i64 g1, std::uint64_t seed, std::uint32_t threshold) {
  for (i64 g = g0; g < g1; ++g) {
    const std::uint64_t bits = dropout_mix(seed, std::uint64_t(g));
    for (int j = 0; j < 4; ++j) mask[4 * g + j] = (std::uint32_t(bits >> (16 * j)) & 0xFFFFu) >= threshold;
  }
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
