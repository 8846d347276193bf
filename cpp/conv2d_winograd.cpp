// conv2d's Winograd path, for 3x3 convolutions with many channels on both sides (a CIFAR-style or
// VGG-style middle layer): F(2x2, 3x3) does 2.25x fewer multiply-adds than any direct method,
// which is how it beats libraries that already run the direct convolution near the FMA peak.
// The kernels (the transforms and the 16 products) are per ISA, in conv2d_winograd_kernels.cpp.
// - Forward: the kernel; with a pool, the convolution's output into scratch, then max_pool2d's
//   kernel (the same y and argmax as the separate layers, bit for bit).
// - Backward: dx is a convolution too, of dy (zero-padded by 2 - pad) with the weights
//   flipped and transposed ([C, K, 3, 3]): the same kernel. dw by F(3x3, 2x2), Winograd's
//   algorithm transposed (the kernels file says how), with 64+ channels in and out; with fewer,
//   and on AVX-512 (whose panels' dw is faster: 2.6 against 3.1 ms on 128->256 4x4, 5.1 against
//   6.5 on 96->96 12x12), through the panels' backward (without dx).
// Numbers: the transforms add and subtract up to 16 terms before and after the product, so
// results differ from the direct paths' by a few float roundings (tests: 1e-4 of the largest).
#include <algorithm>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"

namespace cnnfast {

// dw by F(3x3, 2x2) from this many channels in and out, on the ISAs that have it in their table;
// below, its transforms and packing cost more than the products save (AVX2, batch 32, one thread,
// dw alone: 16->32 on 32x32 5.0 ms against the panels' 3.3; 32->64 on 16x16 even; 96->96 on
// 12x12 6.7 against 7.8; 128->256 on 4x4 3.3 against 4.2)
constexpr i64 kWinogradWeightGradChannels = 64;

void winograd_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N, i64 pool_k) {
  const IsaKernels& isa = active_isa();
  if (pool_k == 0) return isa.winograd_forward(y, x, w, b, s, N);
  ScratchFloats conv(size_t(N) * s.K * s.P());
  isa.winograd_forward(conv.get(), x, w, b, s, N);
  pool_whole(y, argmax, conv.get(), s, N, pool_k);
}

bool winograd_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                            const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  const IsaKernels& isa = active_isa();
  const i64 C = s.C, K = s.K;
  std::unique_ptr<float[]> unpooled;
  if (pool_k) dy = whole_dconv(unpooled, dy, argmax, s, N, pool_k);  // d(conv): each dy routed to its argmax
  if (isa.winograd_weight_grad && std::min(C, K) >= kWinogradWeightGradChannels) {
    if (dw) isa.winograd_weight_grad(dw, x, dy, s, N);
    if (db) bias_grad(db, dy, N, K, s.P());
  } else {
    isa.panels_backward_plain(nullptr, dw, db, x, w, dy, s, N);
  }
  if (dx) {
    std::vector<float> flipped(size_t(C) * K * 9);  // w^T rotated: [C, K, 3, 3]
    for (i64 c = 0; c < C; ++c)
      for (i64 k = 0; k < K; ++k)
        for (int t = 0; t < 9; ++t) flipped[size_t((c * K + k) * 9 + t)] = w[(k * C + c) * 9 + (8 - t)];
    isa.winograd_forward(dx, dy, flipped.data(), nullptr, ConvShape(K, s.Ho, s.Wo, C, 3, 3, 2 - s.pad), N);
  }
  return true;
}

}  // namespace cnnfast
