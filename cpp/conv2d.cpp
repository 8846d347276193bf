// conv2d: any stride, zero padding, PyTorch weight layout [K, C, R, S]; alone, and with ReLU and
// max-pooling as one layer (conv2d_relu_max_pool2d_*, a CNN's usual block). The entry points and
// the one ordered list of paths: as oneDNN's cpu_convolution_list.cpp, the first path that
// accepts the layer runs, with the instruction set in use's kernels (isa.hpp); the reference is last.
//
//   path                   file(s)                                       takes
//   conv3x3_pool2          conv3x3_pool2.cpp (per ISA),                  fused only: 1 channel, 3x3, 2x2 pool
//                          conv3x3_pool2_avx512.cpp                      (conv1), stride 1, no dx; every ISA
//   dense                  linear.cpp, linear_narrow.cpp (per ISA)       a kernel covering the whole unpadded
//                                                                        image (one output pixel), unpooled;
//                                                                        every ISA
//   few_pixels             conv2d_few_pixels.cpp,                        <= 64 output pixels in the batch, > 32
//                          conv2d_few_pixels_kernels.cpp (per ISA)       taps, any stride; 1x1 forward only, a
//                                                                        multiple of 16 pixels an image, <= 512
//                                                                        in the batch; every ISA
//   winograd               conv2d_winograd.cpp,                          3x3, >= 16 channels in and out, >= 32
//                          conv2d_winograd_kernels.cpp (per ISA)         tiles filling 3/4 of its panels, stride 1:
//                                                                        F(4x4) or F(2x2) where it does at most
//                                                                        3/4 of the panels' multiplies (not 2 x 2
//                                                                        outputs at padding 1), an odd output from
//                                                                        the ISA's channels (winograd_tile); the
//                                                                        forward not 16->16 on AVX-512;
//                                                                        stride 2 from 32 to 352 channels in and
//                                                                        64 out:
//                                                                        F(4x4) through the input's phases
//                                                                        (forward; dx where its panels fit the
//                                                                        chunks); every ISA
//   pointwise              conv2d_pointwise_kernels.cpp (per ISA),       1x1, unpadded; forward: 33 to 256
//                          tile_product_impl.hpp                         channels in, whole panels
//                                                                        holding at most 1.35x an image's
//                                                                        pixels (pointwise_product_fits), or
//                                                                        the batch's where the panels' product
//                                                                        would be channel-major, every
//                                                                        ISA, any stride (x's picked pixels
//                                                                        copied out), and a first layer's
//                                                                        patches (kernel = stride) on rows
//                                                                        short of the direct's vectors, over
//                                                                        C*R*S channels; backward (stride 1, no
//                                                                        pool): AVX-512, whole
//                                                                        vectors of pixels, 4+ an image, 64+ in
//                                                                        the batch, up to 16,384 weights
//                                                                        (pointwise_weight_grad_takes)
//   panels                 conv2d_panels.cpp, conv2d_panels_impl.hpp,   > 32 taps (conv2), any stride, but
//                          conv2d_panels_avx512.cpp (AVX-512),           not the forwards the direct path
//                          conv2d_panels_portable.cpp (per ISA), + the   takes (a small padded image's forward
//                          ISA's gemm_microkernel*.cpp                   without the taps in the padding:
//                                                                        skips_padding); every ISA
//   direct                 conv2d_direct.cpp, conv2d_direct_kernels.cpp  <= 32 taps, any stride; forward: also
//                          (its inner loops compiled per ISA; dx through a first layer (<= 4 input channels)
//                          the panels' backward)                         or rows that fill the vectors
//                                                                        (direct_takes), at any number of
//                                                                        taps; every ISA
//   reference              conv2d_ref.cpp                                every layer (the empty ones
//                                                                        only reach it)
// Shared pieces (shape, chunking, scratch, layouts, the bias gradient): conv2d_common.hpp.
// dx at stride 1 where the panels' dx would serve (the panels' backward, or the direct path's) may instead be the
// direct path's forward of dy through w flipped and transposed (dx_by_direct_forward; conv2d_path: "panels, dx
// direct"); pooled, dw is then the unpooled path's on the whole d(conv), as the direct path's with dx always was.
//
// Numbers: y, argmax and dx are the same on every path of an instruction set up to float
// rounding (the fused paths give the separate kernels' y and argmax bit for bit). dw and db are
// the same sums in another order on some paths; and conv pixels no pooling window reads, whose
// gradient is 0, are left out by the fused panels and direct paths (without dx; the panels' with dx
// too, but not where dx_by_direct_forward), so an inf/NaN in x or w that only they meet gives no 0 * inf = NaN there
// (Winograd's fused backward takes the whole d(conv), as the separate layers do: there it does). Likewise the panels'
// forward on small padded images (skips_padding) leaves out some taps in the padding and not others, by how its panels
// group the pixels: an inf or NaN in w there may or may not meet a padded 0 (finite weights: the same bits); so does
// the tap rows' forward (conv2d_tap_rows_impl.hpp), which leaves out the kernel rows above and below the image.
// Winograd's transforms mix a 4 x 4 block of input into each 2 x 2 block of output, so there an inf or NaN in x reaches
// the whole block (where a direct sum would give a finite neighbour). Every path's result is independent of the thread
// count.
#include <atomic>
#include <memory>
#include <type_traits>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"

namespace cnnfast {
namespace {

// conv1's block in registers, through the ISA table (its backward makes no dx, and declines when an
// argmax lies outside its window)
void conv3x3_pool2_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                                const ConvShape& s, i64 N, i64) {
  active_isa().conv3x3_pool2_forward(y, argmax, x, w, b, s, N);
}
bool conv3x3_pool2_backward_path(float*, float* dw, float* db, const float* x, const float*, const float* dy,
                                 const std::int32_t* argmax, const ConvShape& s, i64 N, i64) {
  return active_isa().conv3x3_pool2_backward(dw, db, x, dy, argmax, s, N);
}

bool has_work(const ConvShape& s, i64 N) { return N > 0 && s.K > 0 && s.taps() > 0; }
// conv3x3_pool2 is written for stride 1 (the panels and direct take any stride, winograd strides 1 and 2)
bool unit_stride_work(const ConvShape& s, i64 N) { return has_work(s, N) && s.stride == 1; }

// At most kFewPixels output pixels in the batch, more taps than the direct path's. A 1x1 layer only
// forward, only with a multiple of 16 pixels an image (im2col's rows are then x's own, and x is
// read as it is), and up to 8 x kFewPixels pixels: there 256->64 on 8 x 8 at batch 1 took 0.020 ms
// on the panels and 0.011-0.014 here, 512->128 on 4 x 4 0.030 and 0.010-0.016, 64->128 stride 2 to
// 4 x 4 0.010 and 0.005, 64->128 on 16 x 32 (512 pixels) 0.049 and 0.029 on two threads (AVX-512,
// 1-2 threads; AVX2 alike); at 1,024 pixels the two were even. With 36 or 49 pixels, copied into
// rows of 48 or 64, the panels were faster (0.012 against 0.020 ms, 0.058 against 0.070), and so was
// their backward (0.037 ms for 256->64 on 8 x 8, 0.056 here: the panels' dx is one GEMM).
// Measured at batch 1 on AVX-512, one thread, ms forward / backward, panels (or Winograd) -> here:
// 128->256 on 4 x 4 0.163 / 0.727 -> 0.093 / 0.260; 64->128 stride 2 to 4 x 4 0.037 / 0.159 ->
// 0.031 / 0.069; 64->128 on 8 x 8 0.075 / 0.238 -> 0.078 / 0.167; but 32->64 on 16 x 16 (256
// pixels) 0.053 / 0.137 -> 0.077 / 0.177 and conv2 (121) 0.038 / 0.089 -> 0.046 / 0.107. The
// limit can be changed (set_few_pixels_limit) so that the tests run each layer both ways.
std::atomic<i64> few_pixels_limit{kFewPixels};
bool few_pixels_accepts(const ConvShape& s, i64 N, i64, bool backward) {
  return has_work(s, N) && s.taps() > kDirectTaps && (!pointwise(s) || (!backward && s.P() % 16 == 0)) &&
         (pointwise(s) ? (N * s.P() + 7) / 8 : N * s.P()) <= few_pixels_limit.load() && s.P() < (i64(1) << 30);
}

// A 1x1 layer without padding, forward (any stride), with more input channels than the direct path's
// few taps, where pointwise_product_fits (conv2d_common.cpp) an image's pixels, or the batch's side by side where the
// panels' product would be channel-major (panels_channel_major): their panels go image by image, and one image's
// pixels waste more of them than the batch's do of this product's units. A/B against the panels (Zen 5, batch 32-128,
// one thread): AVX-512 96->576 on 6 x 6 1.44-1.54x faster, 128->64 1.67x, 160->640 on 3 x 3 2.15x; AVX2 on 3 x 3
// 1.75-1.83x (its 36 pixels already fit); where the panels are pixel-major (256->64 on 6 x 6) 0.70-0.93x, not taken.
// Pooled likewise (unmeasured), so that the fused layer keeps the separate layers' sums. Backward where
// pointwise_weight_grad_takes (conv2d_common.cpp): dw by inner products along the pixels, dx by the
// forward's product (input_grad); elsewhere the panels' backward serves (its dx the same product).
// Backward at few taps too: against the direct path's (AVX-512, batch 32/128, 1-2 threads) 16->64 on
// 28 x 28 0.85-0.96x the time, 32->64 on 32 x 32 0.88-0.94x, on 16 x 16 0.65-0.69x, 8->32 0.90-0.98x.
// Strided, forward only: the product on x's pixels the stride picks, copied out first (the panels split x into
// its phases and packed them: 128->256 to 4 x 4 at batch 128 ran 0.66-0.78x PyTorch's speed on AVX-512).
// Patches (a kernel as large as its stride, unpadded: a patchify stem's 4x4 at stride 4), forward: the same product
// over C*R*S channels, x's patches copied out as [C*R*S, pixels] (each input value once, nothing repeated), which is
// w's [K, C*R*S] order. The direct path's rows of phases were 8 pixels on AVX-512's 16 lanes: 3->96 4x4 at stride 4
// on 32 x 32 ran 0.64-0.79x PyTorch's speed. (Patches take the batch's rule too: 3->96 4x4 at stride 4 to 6 x 6 at
// batch 32, 1.46-2.58x faster than the direct path on AVX-512, 1.04-1.08x on AVX2.)
bool patches(const ConvShape& s) {
  return s.pad == 0 && s.R == s.stride && s.S == s.stride && s.stride > 1 && s.C <= kTapRowsChannels &&
         !rows_fill_vectors(s);
}
bool pointwise_accepts(const ConvShape& s, i64 N, i64 pool_k, bool backward) {
  if (!has_work(s, N) || !(pointwise(s) || (!backward && patches(s))) || (backward && s.stride != 1)) return false;
  if (backward) return pool_k == 0 && pointwise_weight_grad_takes(s, N);
  return s.taps() > kDirectTaps && (pointwise_product_fits(s.taps(), s.P()) ||
                                    (panels_channel_major(s) && pointwise_product_fits(s.taps(), N * s.P())));
}
void pointwise_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N, i64 pool_k) {
  const i64 P = s.P(), st = s.stride, T = s.taps(), R = s.R, S = s.S;
  ScratchFloats picked(st > 1 ? size_t(N) * T * P : 0);
  // (im2col_padded makes the same rows, through im2col's padding-aware loop: 0.82-0.87x the speed of this loop with
  // every stride a variable, on strided 1x1 layers and 4x4 patches at one thread, Zen 5)
  // x[n][c][oh*st + r][ow*st + q] -> picked[n][(c*R + r)*S + q][oh*Wo + ow] (1x1: r = q = 0), the stride a constant
  // where it is 2: the compiler's shuffles (this file is built for the baseline: SSE2 on x86-64) then pick four floats
  // at a time. The variable stride's scalar loop was 21-46% of 96->192 at stride 2 on 16 x 16 at batch 128 (one thread,
  // AVX-512's product), this one 19-20%; A/B at batch 128, 21 rounds, Zen 5, the same bits: 64->128 on 32 x 32 1.62x
  // faster on AVX-512 and 1.44x on AVX2 at one thread, 0.94x and 1.21x at two; 96->192 on 16 x 16 0.92-1.03x)
  auto pick = [&](auto stride) {
#pragma omp parallel for num_threads(threads_for(double(N) * T * P)) schedule(static)
    for (i64 nc = 0; nc < N * s.C; ++nc)
      for (i64 r = 0; r < R; ++r)
        for (i64 q = 0; q < S; ++q)
          for (i64 oh = 0; oh < s.Ho; ++oh) {
            const float* from = x + (nc * s.H + oh * stride + r) * s.W + q;
            float* to = picked.get() + ((nc * R + r) * S + q) * P + oh * s.Wo;
            for (i64 ow = 0; ow < s.Wo; ++ow) to[ow] = from[ow * stride];
          }
  };
  if (st == 2) pick(std::integral_constant<i64, 2>{});
  if (st > 2) pick(st);
  if (st > 1) x = picked.get();
  conv_then_pool(y, argmax, s, N, pool_k,
                 [&](float* out) { active_isa().pointwise_forward(out, x, w, T, 1, b, N, T, s.K, P); });
}
bool pointwise_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                             const std::int32_t*, const ConvShape& s, i64 N, i64) {
  // (pointwise_accepts has checked that the ISA has this kernel and that no pool is asked for)
  active_isa().pointwise_weight_grad(dw, db, x, dy, N, s.C, s.K, s.P());
  if (dx) input_grad(dx, x, w, dy, s, N);
  return true;
}

// Few taps (<= kDirectTaps) either way. Forward, at any number of taps: a first layer (<= kTapRowsChannels
// input channels), and a layer whose output rows fill two vectors or more, or 7/8 of theirs (rows_fill_vectors:
// there the direct loop's segments waste few lanes, and it beat the panels' GEMM, packed or transposed: stride-2 16->32
// on 32 x 32 0.86x the time on AVX2; 32->64 5x5 on 32 x 32 0.86x AVX-512 and 0.85x AVX2, 16->32 5x5 0.77-0.80x;
// 1.0-1.1x on rows of 10-15 pixels and 1.7-3.3x AVX-512 on strided rows of 4-8, left to the panels;
// and 1x1 layers, 1.04-1.09x on AVX2, whose panels read x in place)
bool direct_takes(const ConvShape& s, bool backward) {
  return s.taps() <= kDirectTaps || (!backward && (s.C <= kTapRowsChannels || rows_fill_vectors(s)));
}

// A kernel covering the whole image, unpadded (one output pixel: LeNet-5's original C5, 16->120 5x5 on 5 x 5, or a
// 1x1 layer on 1 x 1 features), unpooled: a dense layer over the C*R*S inputs, in the order x's [C, H, W] already
// has (linear.cpp: dot products up to a few images, a GEMM beyond). The panels packed w for one image: 512->256 on
// 1 x 1 at batch 1 took 0.029 ms forward and 0.067 backward where PyTorch took 0.009 and 0.037 (AVX-512, one thread).
bool dense_accepts(const ConvShape& s, i64 N, i64 pool_k, bool) {
  return has_work(s, N) && pool_k == 0 && s.pad == 0 && s.R == s.H && s.S == s.W;
}
void dense_forward_path(float* y, std::int32_t*, const float* x, const float* w, const float* b, const ConvShape& s,
                        i64 N, i64) {
  linear_forward(y, x, w, b, N, s.taps(), s.K);
}
bool dense_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                         const std::int32_t*, const ConvShape& s, i64 N, i64) {
  linear_backward(dx, dw, db, x, w, dy, N, s.taps(), s.K);
  return true;
}

struct Conv2dPath {
  const char* name;
  // Does it take this layer (pool_k = 0: conv2d alone), forward or backward?
  bool (*accepts)(const ConvShape& s, i64 N, i64 pool_k, bool backward);
  bool makes_dx;  // can its backward give the input gradient?
  // y = conv2d(x), or pooled: y, argmax = max_pool2d(conv2d(x), pool_k, relu=true) (argmax may be null)
  void (*forward)(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                  i64 N, i64 pool_k);
  // dx (may be null), dw, db from dy (pooled: dy and argmax); false: declined, the next path runs
  bool (*backward)(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                   const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);
};

const Conv2dPath kPaths[] = {
    {"conv3x3_pool2",
     [](const ConvShape& s, i64 N, i64 pool_k, bool) {
       return unit_stride_work(s, N) && pool_k == 2 && s.C == 1 && s.R == 3 && s.S == 3 && s.Ho >= 2 && s.Wo >= 2 &&
              s.P() < (i64(1) << 30);
     },
     false, conv3x3_pool2_forward_path, conv3x3_pool2_backward_path},
    {"dense", dense_accepts, true, dense_forward_path, dense_backward_path},
    {"few_pixels", few_pixels_accepts, true, few_pixels_forward_path, few_pixels_backward_path},
    {"winograd", winograd_accepts, true, winograd_forward_path, winograd_backward_path},
    {"pointwise", pointwise_accepts, true, pointwise_forward_path, pointwise_backward_path},
    {"panels",
     [](const ConvShape& s, i64 N, i64, bool backward) { return has_work(s, N) && !direct_takes(s, backward); }, true,
     panels_forward_path, panels_backward_path},
    {"direct",
     [](const ConvShape& s, i64 N, i64, bool backward) { return has_work(s, N) && direct_takes(s, backward); }, true,
     direct_forward_path, direct_backward_path},
    {"reference", [](const ConvShape&, i64, i64, bool) { return true; }, true, reference_forward_path,
     reference_backward_path},
};

// The paths that may run, in order: forward, or backward with or without dx
bool candidate(const Conv2dPath& path, const ConvShape& s, i64 N, i64 pool_k, bool backward, bool dx) {
  return path.accepts(s, N, pool_k, backward) && !(backward && dx && !path.makes_dx);
}

const Conv2dPath* chosen(const ConvShape& s, i64 N, i64 pool_k, bool backward, bool dx) {
  for (const Conv2dPath& path : kPaths)
    if (candidate(path, s, N, pool_k, backward, dx)) return &path;
  return nullptr;  // (not reached: the reference accepts everything)
}

// dx of a stride-1 layer as a forward convolution: dy padded by R - 1 - pad through w flipped and transposed
// ([C, K, R, S]), output [N, C, H, W]
ConvShape transposed_shape(const ConvShape& s) { return ConvShape(s.K, s.Ho, s.Wo, s.C, s.R, s.S, s.R - 1 - s.pad); }

// dx by the direct path's forward of transposed_shape, where the layer's dx would be the panels' (the panels' backward,
// or the direct path's, which takes the panels' dx): a square kernel of 3x3 or less (pad < R) whose transposed layer
// has rows that fill the direct path's vectors (rows_fill_vectors; few channels, so not Winograd's). Against the
// panels' dx, batch 32, one thread, Zen 5, AVX-512 / AVX2: 8->8 3x3 p1 on 48 x 48 3.9x / 2.0x the speed, 32->8 p1 on
// 16 x 16 2.1x / 1.5x, 8->16 p1 on 32 x 32 2.6x / 1.4x; but 5x5 layers even (64->64 p2 on 16 x 16 1.07x / 0.93x,
// 32->64 p2 on 28 x 28 1.04x / 0.91x): none there. Pooled or not alike, so that the fused layer's dx stays the
// separate layers'. (Winograd's forward as dx on odd outputs, whose backward Winograd leaves to the panels, was
// 1.01-1.22x faster unpooled, 96->96 on 13 x 13, but 0.87-0.97x pooled on AVX-512, where the panels make dw and dx
// from one packing: not taken.)
bool dx_by_direct_forward(const ConvShape& s, i64 N, i64 pool_k) {
  if (s.stride != 1 || s.R != s.S || s.R * s.S > 9 || pointwise(s) || s.pad >= s.R) return false;
  const Conv2dPath* dx_path = chosen(s, N, pool_k, true, true);
  if (dx_path->backward != panels_backward_path && dx_path->backward != direct_backward_path) return false;
  const ConvShape t = transposed_shape(s);
  return rows_fill_vectors(t) && chosen(t, N, 0, false, false)->forward == direct_forward_path;
}

void forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s, i64 N,
             i64 pool_k) {
  chosen(s, N, pool_k, false, false)->forward(y, argmax, x, w, b, s, N, pool_k);
}

void backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
              const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  if (dx && dx_by_direct_forward(s, N, pool_k)) {
    std::unique_ptr<float[]> dconv;
    if (pool_k > 0) dy = whole_dconv(dconv, dy, argmax, s, N, pool_k);
    backward(nullptr, dw, db, x, w, dy, nullptr, s, N, 0);
    const std::vector<float> flipped = flipped_transposed(w, s.K, s.C, s.R * s.S), zeros(size_t(s.C), 0.0f);
    return direct_forward_path(dx, nullptr, dy, flipped.data(), zeros.data(), transposed_shape(s), N, 0);
  }
  for (const Conv2dPath& path : kPaths)
    if (candidate(path, s, N, pool_k, true, dx != nullptr) && path.backward(dx, dw, db, x, w, dy, argmax, s, N, pool_k))
      return;
}

}  // namespace

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo]
void conv2d_forward(float* y, const float* x, const float* w, const float* b, i64 N, i64 C, i64 H, i64 W, i64 K, i64 R,
                    i64 S, i64 pad, i64 stride) {
  forward(y, nullptr, x, w, b, ConvShape(C, H, W, K, R, S, pad, stride), N, 0);
}

// x: [N, C, H, W], w: [K, C, R, S], dy: [N, K, Ho, Wo] -> dx: [N, C, H, W] (skipped if null),
// dw: [K, C, R, S], db: [K]
void conv2d_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy, i64 N, i64 C,
                     i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 stride) {
  backward(dx, dw, db, x, w, dy, nullptr, ConvShape(C, H, W, K, R, S, pad, stride), N, 0);
}

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y, argmax: [N, K, Ho/k, Wo/k]
void conv2d_relu_max_pool2d_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                                    i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 k, i64 stride) {
  forward(y, argmax, x, w, b, ConvShape(C, H, W, K, R, S, pad, stride), N, k);
}

// dy, argmax: [N, K, Ho/k, Wo/k] -> dx: [N, C, H, W] (may be null), dw: [K, C, R, S], db: [K]
void conv2d_relu_max_pool2d_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                                     const std::int32_t* argmax, i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S,
                                     i64 pad, i64 k, i64 stride) {
  backward(dx, dw, db, x, w, dy, argmax, ConvShape(C, H, W, K, R, S, pad, stride), N, k);
}

const char* conv2d_path(i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 pool_k, bool backward,
                        bool input_grad, i64 stride) {
  const ConvShape s(C, H, W, K, R, S, pad, stride);
  const Conv2dPath* path = chosen(s, N, pool_k, backward, input_grad);
  if (backward && input_grad && path->backward == panels_backward_path && dx_by_direct_forward(s, N, pool_k))
    return "panels, dx direct";
  return path->name;
}

i64 set_few_pixels_limit(i64 pixels) { return few_pixels_limit.exchange(pixels); }

int conv2d_paths(const char** names, int max) {
  int n = 0;
  for (const Conv2dPath& path : kPaths)
    if (n < max) names[n++] = path.name;
  return n;
}

}  // namespace cnnfast
