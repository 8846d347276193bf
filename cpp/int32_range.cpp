// The smallest and largest of a block of int32 (the bindings' check of argmax values), compiled
// once per instruction set (SSE2 has no packed 32-bit min/max; AVX2 and AVX-512 do).
#include "isa.hpp"
#include "isa_target.hpp"

CNNFAST_TARGET_BEGIN
namespace cnnfast {
namespace CNNFAST_ISA {

// low = min(low, a[0:n]), high = max(high, a[0:n])
void int32_range_block(const std::int32_t* a, i64 n, std::int32_t* low, std::int32_t* high) {
  std::int32_t lo = *low, hi = *high;
  for (i64 i = 0; i < n; ++i) {
    lo = a[i] < lo ? a[i] : lo;
    hi = a[i] > hi ? a[i] : hi;
  }
  *low = lo, *high = hi;
}

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
CNNFAST_TARGET_END
