// dropout's counter-based generator, shared by dropout.cpp and the per-ISA dropout_mask.cpp.
#pragma once
#include <cstdint>

namespace cnnfast {

// SplitMix64 finaliser of (seed, i): a well-mixed 64-bit value per element.
inline std::uint64_t dropout_mix(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace cnnfast
