// conv2d's panel path: long patches through GEMMs whose operands are packed straight from the
// image (conv2d_panels_impl.hpp, compiled per ISA with its helpers: conv2d_panels_avx512.cpp,
// conv2d_panels_portable.cpp; reached through the ISA table). This file only chooses, for the
// fused backward, which output pixels count.
#include <atomic>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"

namespace cnnfast {
namespace {

// The fused backward's dy source: d(conv) of a chunk over a region of pixels (pooled_dconv_chunk)
struct RegionDy {
  const float* dy;
  const std::int32_t* argmax;
  const ConvShape* s;
  i64 pool_k, nr, Pr;
  const std::int32_t* index;  // pixel p's place in the region, -1 outside
  float* lanes;
  std::atomic<bool>* outside;  // set if an argmax pointed out of the region
  static DyPanels chunk(const void* context, i64 n0, i64 n1, float* kl, float* lk) {
    const RegionDy& r = *static_cast<const RegionDy*>(context);
    if (!pooled_dconv_chunk(kl, lk, r.nr, r.lanes, r.dy, r.argmax, *r.s, r.pool_k, n0, n1, r.index, r.Pr))
      r.outside->store(true, std::memory_order_relaxed);
    return {kl, r.Pr, (n1 - n0) * r.Pr, lk};
  }
};

}  // namespace

void panels_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                         const ConvShape& s, i64 N, i64 pool_k) {
  // strided: the input values broadcast from where they lie (no phase-split copy, nothing packed)
  if (tap_rows_forward_path(y, argmax, x, w, b, s, N, pool_k)) return;
  active_isa().panels_forward(y, argmax, x, w, b, s, N, pool_k);
}

// Pooled: only the pixels the windows read count (conv2: 100 of 121), when every argmax points
// into them (it does when it comes from the forward; if not, all pixels count).
bool panels_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                          const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  if (tap_rows_backward(dx, dw, db, x, w, dy, argmax, s, N, pool_k)) return true;  // (a first layer)
  const IsaKernels& isa = active_isa();
  if (pool_k == 0) {
    isa.panels_backward_plain(pointwise(s) ? nullptr : dx, dw, db, x, w, dy, s, N);
    if (dx && pointwise(s)) input_grad(dx, x, w, dy, s, N);  // (a 1x1 layer's dx: one product an image)
    return true;
  }
  const i64 P = s.P(), Hu = s.Ho / pool_k * pool_k, Wu = s.Wo / pool_k * pool_k;
  ScratchFloats lanes(size_t(N) * s.K * 16);  // (every lane written by pooled_dconv_chunk)
  std::atomic<bool> outside{false};
  std::vector<std::int32_t> read(static_cast<size_t>(P));  // the pixels the windows read
  for (i64 p = 0; p < P; ++p)
    read[size_t(p)] = p / s.Wo < Hu && p % s.Wo < Wu ? std::int32_t(p / s.Wo * Wu + p % s.Wo) : -1;
  const RegionDy region{dy, argmax, &s, pool_k, isa.gemm->nr, Hu * Wu, read.data(), lanes.get(), &outside};
  isa.panels_backward(dx, dw, x, w, DyPanelsSource{&RegionDy::chunk, &region}, s, N, Hu, Wu);
  if (outside.load() && Hu * Wu < P) {  // (not from the forward pass: take every pixel)
    std::vector<std::int32_t> every(static_cast<size_t>(P));
    for (i64 p = 0; p < P; ++p) every[size_t(p)] = std::int32_t(p);
    const RegionDy all{dy, argmax, &s, pool_k, isa.gemm->nr, P, every.data(), lanes.get(), &outside};
    isa.panels_backward(dx, dw, x, w, DyPanelsSource{&RegionDy::chunk, &all}, s, N, s.Ho, s.Wo);
  }
  sum_bias_lanes(db, lanes.get(), N, s.K);
  return true;
}

}  // namespace cnnfast
