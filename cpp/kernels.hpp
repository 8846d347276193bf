// cnnfast kernels: the C++ API, one declaration per kernel, with shapes.
//
// Conventions (stated once, here):
// - float32, row-major, activations NCHW. Weights in PyTorch's layout: conv [K, C, R, S]
//   (out, in, kernel rows, kernel cols), linear [O, I] (out, in).
// - Argument order as in llm.c: outputs first, then state saved for backward (the max-pool
//   argmax, the dropout mask), then inputs, then sizes. Gradients carry a `d` prefix.
// - Gradients are OVERWRITTEN, never accumulated: every kernel writes each element of each
//   output exactly once, so callers never zero anything.
// - Kernels trust their inputs: shapes, dtypes and contiguity are checked once, in
//   bindings.cpp. They may throw std::bad_alloc for scratch space (before any parallel region).
// - Results do not depend on the thread count: each output element is reduced in one fixed
//   order by exactly one thread (OpenMP splits over the batch or over output channels).
#pragma once
#include <cstdint>

namespace cnnfast {

using i64 = std::int64_t;

// ---- threads and instruction sets (cpu_features.cpp) ----
void set_num_threads(int n);  // n >= 1
int get_num_threads();
// Threads worth using for `work` multiply-adds: 1 for work too small to pay for a fork/join.
int threads_for(double work);

// ---- conv2d.cpp: zero padding `pad` on all four sides, stride `stride` (>= 1) ----
// Ho = (H + 2*pad - R) / stride + 1, Wo = (W + 2*pad - S) / stride + 1 (both >= 1)
// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo]
void conv2d_forward(float* y, const float* x, const float* w, const float* b, i64 N, i64 C, i64 H, i64 W, i64 K, i64 R,
                    i64 S, i64 pad, i64 stride = 1);
// x: [N, C, H, W], w: [K, C, R, S], dy: [N, K, Ho, Wo] -> dx: [N, C, H, W], dw: [K, C, R, S],
// db: [K]. dx may be null (not computed: a network's first layer needs no input gradient).
void conv2d_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy, i64 N, i64 C,
                     i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 stride = 1);
// The readable specification (conv2d_ref.cpp): seven nested loops each way, used by the tests as a
// second reference and the last path of conv2d's list.
void conv2d_forward_naive(float* y, const float* x, const float* w, const float* b, i64 N, i64 C, i64 H, i64 W, i64 K,
                          i64 R, i64 S, i64 pad, i64 stride = 1);
void conv2d_backward_naive(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy, i64 N,
                           i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 stride = 1);
// Which of conv2d's paths (conv2d.cpp's list) runs for this layer with the instruction set in use;
// pool_k > 0: the fused conv2d_relu_max_pool2d kernels; backward: that entry point's first choice
// (a path that declines at run time, on an argmax outside its window, hands over to the next).
const char* conv2d_path(i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 pool_k, bool backward,
                        bool input_grad, i64 stride = 1);
// The paths the instruction set in use offers, in the list's order (names[0..returned))
int conv2d_paths(const char** names, int max);
// The most output pixels (N*Ho*Wo) the few-pixels path takes (0: none); returns the limit before
i64 set_few_pixels_limit(i64 pixels);
// The largest tile m of Winograd's F(m x m, 3x3) conv2d may choose (4, or 2); returns the one before
int set_winograd_tile_limit(int m);

// ---- relu.cpp: any shape, n elements ----
// y = max(x, 0) (NaN propagates)
void relu_forward(float* y, const float* x, i64 n);
// dx = dy where x > 0, else 0
void relu_backward(float* dx, const float* x, const float* dy, i64 n);

// ---- max_pool2d.cpp: window k, stride k, floor ----
// x: [N, C, H, W] -> y: [N, C, H/k, W/k], argmax: [N, C, H/k, W/k] (index h*W + w in the plane)
// relu: y = pool(relu(x)) in the same pass; windows whose max is <= 0 get y = 0, argmax = -1
void max_pool2d_forward(float* y, std::int32_t* argmax, const float* x, i64 N, i64 C, i64 H, i64 W, i64 k, bool relu);
// dy, argmax: [N, C, Ho, Wo] -> dx: [N, C, H, W] (each dy routed to its argmax, zero elsewhere;
// argmax -1 routes nothing)
void max_pool2d_backward(float* dx, const std::int32_t* argmax, const float* dy, i64 N, i64 C, i64 H, i64 W, i64 Ho,
                         i64 Wo);
// The same two on `planes` consecutive planes, in the calling thread (for fused kernels)
void max_pool2d_planes(float* y, std::int32_t* argmax, const float* x, i64 planes, i64 H, i64 W, i64 k, bool relu);
void max_pool2d_backward_planes(float* dx, const std::int32_t* argmax, const float* dy, i64 planes, i64 H, i64 W,
                                i64 Ho, i64 Wo);

// The smallest and largest of a[0:n], or -1 and -1 when n = 0 (checking argmax values)
void int32_range(const std::int32_t* a, i64 n, std::int32_t* lo, std::int32_t* hi);

// ---- conv2d.cpp: convolution, ReLU and max-pooling as one layer (a CNN's usual block) ----
// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y, argmax: [N, K, Ho/k, Wo/k] (argmax may be null:
// not wanted, as in inference)
// y, argmax = max_pool2d(conv2d(x, w, b, pad), k, relu=true), the same numbers, without writing
// the convolution's output to memory when the patches are short (the direct path)
void conv2d_relu_max_pool2d_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                                    i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 k, i64 stride = 1);
// dy, argmax: [N, K, Ho/k, Wo/k] -> dx (may be null), dw, db: conv2d_backward of
// max_pool2d_backward(dy, argmax), the same numbers (dw and db up to float rounding: on AVX-512
// some paths sum them in another order; and conv pixels no window reads, whose gradient is 0,
// are left out, so an inf/NaN in x or w that only they meet gives no 0 * inf = NaN)
void conv2d_relu_max_pool2d_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                                     const std::int32_t* argmax, i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S,
                                     i64 pad, i64 k, i64 stride = 1);

// ---- dropout.cpp: inverted dropout, keep probability 1-p, mask from a counter-based RNG ----
// x: [n] -> y: [n], mask: [n] (1 kept, 0 dropped); y = x * mask / (1 - p)  (p == 1: y = 0)
void dropout_forward(float* y, std::uint8_t* mask, const float* x, i64 n, float p, std::uint64_t seed);
// dy, mask: [n] -> dx: [n]
void dropout_backward(float* dx, const std::uint8_t* mask, const float* dy, i64 n, float p);

// ---- augment.cpp: random affine maps and elastic distortions, bilinear sampling ----
// The ranges images are drawn from: rotation uniform in [-rotation, rotation] degrees, scale in
// [scale_min, scale_max], horizontal shear in [-shear, shear] degrees, translation in
// [-translate, translate] times the width (x) and height (y); an elastic field (Simard et al.
// 2003) of uniform noise in [-1, 1) smoothed by a Gaussian of `sigma` pixels times `alpha`
// pixels (alpha 0: none). Draws depend on (seed, step, image index) only.
struct AugmentRanges {
  float rotation, scale_min, scale_max, shear, translate, alpha, sigma;
};
// -> affine: [N, 6], each image's inverse map (a, b, c, d, e, f): output pixel (i, j) reads the
// source at (x, y) = (a j + b i + c, d j + e i + f); field: [N, 2, H, W] (dx, dy added to that
// position), written only when alpha > 0
void augment_draw(float* affine, float* field, i64 N, i64 H, i64 W, std::uint64_t seed, std::uint64_t step,
                  const AugmentRanges& ranges);
// x: [N, C, H, W], affine: [N, 6], field: [N, 2, H, W] or null -> y: [N, C, H, W], bilinear, `fill`
// outside the image; a sample at an integer position is the source pixel exactly
void warp_bilinear(float* y, const float* x, const float* affine, const float* field, i64 N, i64 C, i64 H, i64 W,
                   float fill);
// x: [N, C, H, W] -> y: [N, C, H, W], the same as warp_bilinear of augment_draw's maps and fields
void augment_forward(float* y, const float* x, i64 N, i64 C, i64 H, i64 W, float fill, std::uint64_t seed,
                     std::uint64_t step, const AugmentRanges& ranges);

// ---- linear.cpp ----
// x: [N, I], w: [O, I], b: [O] -> y: [N, O] = x w^T + b
void linear_forward(float* y, const float* x, const float* w, const float* b, i64 N, i64 I, i64 O);
// x: [N, I], w: [O, I], dy: [N, O] -> dx: [N, I] (skipped if null), dw: [O, I], db: [O]
void linear_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy, i64 N, i64 I,
                     i64 O);

// ---- cross_entropy.cpp ----
// logits: [N, K], labels: [N] in 0..K-1 -> returns the mean loss; dlogits: [N, K] its gradient.
// Labels come as int32 or int64 (Label = std::int32_t or std::int64_t). label_smoothing e in
// [0, 1] (PyTorch's): the target is (1-e)*onehot(label) + e/K instead of onehot(label).
template <typename Label>
double softmax_cross_entropy(float* dlogits, const float* logits, const Label* labels, i64 N, i64 K,
                             float label_smoothing);

// ---- optim.cpp: in place on n float32 parameters ----
// SGD with momentum (PyTorch's rule, dampening 0): g = grad + wd*param; v = momentum*v + g;
// param -= lr * v   (momentum 0: param -= lr * g, velocity untouched)
void sgd_step(float* param, float* velocity, const float* grad, i64 n, float lr, float momentum, float weight_decay);
// Adam (PyTorch's rule): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// param -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = step >= 1
void adam_step(float* param, float* m, float* v, const float* grad, i64 n, i64 step, float lr, float beta1, float beta2,
               float eps, float weight_decay);
// AdamW (PyTorch's rule, decoupled weight decay): param *= 1 - lr*wd; then Adam's update of
// param with the plain gradient (no weight decay added to it)
void adamw_step(float* param, float* m, float* v, const float* grad, i64 n, i64 step, float lr, float beta1,
                float beta2, float eps, float weight_decay);

// ---- activations.cpp: elementwise, any shape, n elements ----
// y = x > 0 ? x : slope * x; dx = x > 0 ? dy : slope * dy
void leaky_relu_forward(float* y, const float* x, i64 n, float slope);
void leaky_relu_backward(float* dx, const float* x, const float* dy, i64 n, float slope);
// y = tanh(x); dx = dy * (1 - y^2) from the forward's output y
void tanh_forward(float* y, const float* x, i64 n);
void tanh_backward(float* dx, const float* y, const float* dy, i64 n);
// y = 1 / (1 + exp(-x)) (no overflow for any x); dx = dy * y * (1 - y) from the forward's output y
void sigmoid_forward(float* y, const float* x, i64 n);
void sigmoid_backward(float* dx, const float* y, const float* dy, i64 n);

// ---- pooling windows of any size, stride and padding (floor, as PyTorch's ceil_mode=False) ----
struct PoolWindow {
  i64 kh, kw;  // window
  i64 sh, sw;  // stride
  i64 ph, pw;  // padding on each side
  i64 out_height(i64 H) const { return (H + 2 * ph - kh) / sh + 1; }
  i64 out_width(i64 W) const { return (W + 2 * pw - kw) / sw + 1; }
};
// max_pool2d_window.cpp: padding counts as -inf. x: [N, C, H, W] -> y, argmax: [N, C, Ho, Wo]
// (argmax: index h*W + w of the window's first maximum in its plane; NaN wins). Needs
// ph <= kh / 2, pw <= kw / 2 (every window holds a pixel of the image).
void max_pool2d_window_forward(float* y, std::int32_t* argmax, const float* x, i64 N, i64 C, i64 H, i64 W,
                               const PoolWindow& p);
// dy, argmax: [N, C, Ho, Wo] -> dx: [N, C, H, W], each dy added at its argmax, zero elsewhere
void max_pool2d_window_backward(float* dx, const std::int32_t* argmax, const float* dy, i64 N, i64 C, i64 H, i64 W,
                                i64 Ho, i64 Wo);
// avg_pool2d.cpp: padding counts as 0. x: [N, C, H, W] -> y: [N, C, Ho, Wo], each the window's sum
// over kh * kw (count_include_pad) or over the number of its pixels inside the image
void avg_pool2d_forward(float* y, const float* x, i64 N, i64 C, i64 H, i64 W, const PoolWindow& p,
                        bool count_include_pad);
// dy: [N, C, Ho, Wo] -> dx: [N, C, H, W]
void avg_pool2d_backward(float* dx, const float* dy, i64 N, i64 C, i64 H, i64 W, i64 Ho, i64 Wo, const PoolWindow& p,
                         bool count_include_pad);
// global average pooling: x: [planes, HW] -> y: [planes] (the mean of each plane); dx = dy / HW
void global_avg_pool2d_forward(float* y, const float* x, i64 planes, i64 HW);
void global_avg_pool2d_backward(float* dx, const float* dy, i64 planes, i64 HW);
// ---- batch_norm.cpp: over the channels of [N, C, L] (BatchNorm2d: L = H*W; BatchNorm1d: L = 1
// for [N, C], or the length of [N, C, L]), PyTorch's rules ----
// Training: x: [N, C, L], gamma, beta: [C] -> y: [N, C, L] = (x - mean_c) * invstd_c * gamma_c + beta_c
// with the batch's mean and biased variance per channel, invstd = 1 / sqrt(var + eps);
// save_mean, save_invstd: [C] (for backward); running_mean, running_var: [C] updated in place,
// r = (1 - momentum) r + momentum * batch value, with the unbiased variance (N*L >= 2)
void batch_norm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                              const float* x, const float* gamma, const float* beta, i64 N, i64 C, i64 L, float eps,
                              float momentum);
// Inference: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta
void batch_norm_forward_eval(float* y, const float* x, const float* gamma, const float* beta, const float* running_mean,
                             const float* running_var, i64 N, i64 C, i64 L, float eps);
// The training forward's gradients: x, dy: [N, C, L], gamma, save_mean, save_invstd: [C] ->
// dx: [N, C, L] (may be null: not computed), dgamma, dbeta: [C]
void batch_norm_backward(float* dx, float* dgamma, float* dbeta, const float* x, const float* gamma, const float* dy,
                         const float* save_mean, const float* save_invstd, i64 N, i64 C, i64 L);

}  // namespace cnnfast
