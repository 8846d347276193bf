// What conv2d's paths share: the layer's shape, the chunking of a batch, scratch space, the
// layout changes between NCHW and the paths' layouts, and the bias gradient's two steps.
// The paths themselves (conv2d.cpp lists them in order) declare their entry points at the end.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "kernels.hpp"

namespace cnnfast {

struct IsaKernels;

// Output pixel (oh, ow) reads input rows oh*stride - pad .. + R-1 and columns ow*stride - pad .. + S-1.
struct ConvShape {
  i64 C, H, W, K, R, S, pad, stride, Ho, Wo, Hp, Wp;
  ConvShape(i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 pad, i64 stride = 1)
      : C(C),
        H(H),
        W(W),
        K(K),
        R(R),
        S(S),
        pad(pad),
        stride(stride),
        Ho((H + 2 * pad - R) / stride + 1),
        Wo((W + 2 * pad - S) / stride + 1),
        Hp(H + 2 * pad),
        Wp(W + 2 * pad) {}
  i64 P() const { return Ho * Wo; }       // output pixels per channel
  i64 taps() const { return C * R * S; }  // patch row length
};

// Scratch space: n floats (uninitialised), starting on a 64-byte cache line, so that buffers of
// whole lines carved from it keep vector loads and stores from straddling two lines.
class ScratchFloats {
 public:
  explicit ScratchFloats(size_t n) : p_(static_cast<float*>(std::malloc(lines(std::max<size_t>(n, 1)) * 4 + 64))) {
    if (!p_) throw std::bad_alloc();
  }
  ~ScratchFloats() { std::free(p_); }
  ScratchFloats(const ScratchFloats&) = delete;
  ScratchFloats& operator=(const ScratchFloats&) = delete;
  float* get() const { return reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(p_) + 63) / 64 * 64); }
  // n floats rounded up to whole 64-byte lines
  static size_t lines(size_t n) { return (n + 15) / 16 * 16; }

 private:
  float* p_;
};
inline size_t lines(size_t n) { return ScratchFloats::lines(n); }

// Images per chunk and number of chunks: up to ~1,024 pixels per chunk (conv2's backward keeps a
// chunk's image, input gradient and dy in two layouts, ~0.6 MB, inside L2: 3-4% faster than
// 2,048, 512 slower), the number of chunks rounded up to a multiple of 4 (so that 2 or 4 threads
// get equal shares: conv2's 121 pixels an image at batch 128 make 16 chunks of 8 images); one
// image when an image alone has 512 pixels or more (then dy and y are used in place).
// The chunking depends only on the shapes, never on the thread count, so a weight gradient
// summed over chunks in chunk order is the same for any number of threads.
struct Chunking {
  i64 per_chunk, chunks;
  Chunking(i64 N, i64 P) {
    N = std::max<i64>(N, 1), P = std::max<i64>(P, 1);
    const i64 wanted = (std::max<i64>(1, (N * P + 1023) / 1024) + 3) / 4 * 4;
    per_chunk = P >= 512 ? 1 : (N + wanted - 1) / wanted;
    chunks = (N + per_chunk - 1) / per_chunk;
  }
};

// (the work, in multiply-adds, below which a single chunk stays on one thread with AVX-512's
// 64-byte vectors: waking the second costs more than it saves; mnist conv2 at batch 1, 2.2M, took
// 0.047 ms on two threads, 0.039 on one (an Intel Xeon). Where a core multiplies less per cycle the
// same work takes longer, and the panels' forward splits from less: split_work in conv2d_loops_impl.hpp)
constexpr double kSplitChunkWork = 4.0 * (1 << 20);

// n rounded up to a multiple of m
inline i64 round_up(i64 n, i64 m) { return (n + m - 1) / m * m; }

// n items in as few near-equal blocks of at most `most` as go: the blocks' size (9 by 4: 3, 3, 3,
// not 4, 4, 1)
inline i64 even_block(i64 n, i64 most) {
  const i64 blocks = (n + most - 1) / most;
  return (n + blocks - 1) / blocks;
}

// Threads for `work` multiply-adds split into `units` pieces (never more threads than pieces)
inline int threads_over(double work, i64 units) {
  return std::max(1, std::min<int>(threads_for(work), int(std::max<i64>(units, 1))));
}

// x_n: [C, H, W] -> col: [C*R*S, Ho*Wo] with rows ld apart (ld >= Ho*Wo),
// col[(c*R + r)*S + q][oh*Wo + ow] = x[c][oh*stride + r - pad][ow*stride + q - pad] (0 outside x)
void im2col(float* col, const float* x, const ConvShape& s, i64 ld);
// An image laid out so that its taps are read in place at any stride: zero-bordered and split
// into stride x stride phases (padded row % stride, padded column % stride), each channel's phase
// a plane of Hs x Ws, [phase][C][Hs][Ws] ([C][Hp][Wp] at stride 1). Output pixel (oh, ow)'s tap
// t = (c*R + r)*S + q lies at tap_offset[t] + oh*Ws + ow: a tap of a row's consecutive output
// pixels reads consecutive floats. `floats` counts `slack` floats past the layout too. (The panels
// build the same layout their own way, through a table of every input pixel's place: faster on
// rows of 8, where a row split into phases one by one took a fifth of a stride-2 64->128 layer's
// forward; the table built per call made a stride-2 3->32 layer on 32 x 32 1.1-1.6x slower here.)
struct PhaseLayout {
  i64 Hs, Ws, plane, floats;
  std::vector<i64> tap_offset;
  PhaseLayout(const ConvShape& s, i64 slack);
  // x_n: [C, H, W] -> dst, whose border, spare rows and columns and slack are zero (zeroed once:
  // copy never writes them)
  void copy(float* dst, const float* x, const ConvShape& s) const;
};

// The first n floats of each of `copies` regions `stride` floats apart set to 0 (each thread's copy
// of the zero-bordered image: zeroed once a call, its border never written after)
inline void zero_each(float* first, int copies, size_t stride, size_t n) {
  for (int t = 0; t < copies; ++t) std::fill(first + size_t(t) * stride, first + size_t(t) * stride + n, 0.0f);
}
// out[i] = 0 + parts[0][i] + parts[1][i] + ... (the parts in order)
void sum_parts(float* out, const float* parts, i64 count, i64 n);

// The bias gradient in two steps, the same everywhere: each row d[0:P] (one image, one channel)
// into 16 interleaved float lanes (so it vectorises), then db[k] = the lanes of every image,
// added in image order in double. Rows of 16 pixels or fewer (bias_from_dy) may skip the lanes: a row's lanes are then
// its values (-0 made +0) and +0s, and a double sum that starts at +0 is never -0, so adding +0 or -0 leaves it as it
// is: dy's rows summed in the same order give the same bits, without writing and reading back 16 lanes a row.
inline bool bias_from_dy(i64 P) { return P <= 16; }
inline void row_lanes(float lanes[16], const float* d, i64 P) {
  float acc[16] = {};  // a local array, so the sums stay in registers (lanes may alias d)
  i64 p = 0;
  for (; p + 16 <= P; p += 16)
    for (int j = 0; j < 16; ++j) acc[j] += d[p + j];
  for (; p < P; ++p) acc[p % 16] += d[p];
  for (int j = 0; j < 16; ++j) lanes[j] = acc[j];
}
// lanes: [N, K, 16] -> db: [K]
void sum_bias_lanes(float* db, const float* lanes, i64 N, i64 K);
// db from dy: [N, K, P] through row_lanes and sum_bias_lanes (bias_from_dy: the same sums straight from dy)
void bias_grad(float* db, const float* dy, i64 N, i64 K, i64 P);

// The fused backward's d(conv): dy routed through argmax ([N, K, Hq, Wq], indices into the
// Ho x Wo plane) for the images n0..n1, over a region of Pr pixels an image (index[p]: pixel p's
// place in the region, -1 outside). Written channel-major kl[K, L] and pixel-major lk in panels
// of `width` channels (zeros up to the next multiple): lk[(k / width)*L*width + l*width + k % width],
// L = (n1 - n0)*Pr (lk may be null: not wanted); each row's bias lanes into lanes[N, K, 16]. Returns
// false if an argmax >= 0 pointed outside the region.
bool pooled_dconv_chunk(float* kl, float* lk, i64 width, float* lanes, const float* dy, const std::int32_t* argmax,
                        const ConvShape& s, i64 pool_k, i64 n0, i64 n1, const std::int32_t* index, i64 Pr);

// dx: [N, C, H, W] from w and dy: [N, K, Ho, Wo] alone (no dw): a 1x1 layer without padding by one
// product an image, dx_n[C, P] = w^T dy_n (the pointwise product where it fits, else a GEMM;
// strided: into scratch, then spread over every stride-th pixel, the rest 0); any other layer
// through the panels' backward
void input_grad(float* dx, const float* x, const float* w, const float* dy, const ConvShape& s, i64 N);
inline bool pointwise(const ConvShape& s) { return s.R == 1 && s.S == 1 && s.pad == 0; }
// The kernel rows (or columns) [first, last) that output row (column) o reads inside an image of `in` rows (columns),
// for a kernel of k; empty (first == last) where it reads only padding
std::pair<i64, i64> taps_inside(const ConvShape& s, i64 o, i64 in, i64 k);
// The fraction of a layer's taps (over every output pixel) that fall inside the image, not in the padding
double fraction_inside(const ConvShape& s);
// Whether the pixel-major product skips a padded layer's taps in the padding (conv2d_panels_impl.hpp's PaddedPieces):
// where they are 30% of the taps or more (3x3 at padding 1 on 4 x 4 or less: 384->384 on 3 x 3 took 0.79-0.94x the time
// at batch 32-128, 1-2 threads, AVX-512 and AVX2; stride 2 256->512 on 4 x 4, 0.93-0.96x). Where fewer are skipped it
// was no faster: 192->192 on 5 x 5 (25%) 0.96-1.23x the time, 80->80 on 9 x 9 (14%) 1.04x, 64->64 5x5 on 16 x 16
// (14%) 1.13x: the panels' pieces are shorter, packed in more runs. The same rule pooled or not, so that the fused
// layer keeps the separate layers' sums.
bool skips_padding(const ConvShape& s);
// A panel's runs of pixels (each {offset, lanes}: lane l of the run reads element offset + l) as one gather's
// indices: lane_offset[l] for the first `lanes` lanes, and the lanes filled; false where an offset does not fit an
// int32 (the panels' packing on AVX-512 and AVX2, where many short runs took a masked load or copy each a tap)
template <class Run>
bool gather_offsets(const Run* runs, int nruns, int lanes, std::int32_t* lane_offset, std::uint32_t& filled) {
  filled = 0;
  for (int j = 0; j < nruns; ++j)
    for (int l = 0; l < lanes; ++l)
      if (runs[j].lanes >> l & 1) {
        const i64 at = runs[j].offset + l;
        if (at < 0 || at > INT32_MAX) return false;
        lane_offset[l] = std::int32_t(at), filled |= 1u << l;
      }
  return true;
}
// Does the ISA's pointwise product (conv2d_pointwise_kernels.cpp) take P pixels (an image's, or a batch's side by
// side) with C channels in (at most kPointwiseChannels: its products' depth, in one block)?
constexpr i64 kPointwiseChannels = 256;
bool pointwise_product_fits(i64 C, i64 P);
// Does the panels' forward make its product channel-major, image by image, for its few taps and many output channels
// (conv2d_forward_panels, unpooled; it also does where one tile of its kernel holds every output channel)?
constexpr i64 kChannelMajorTaps = 160, kChannelMajorChannels = 64;
inline bool panels_channel_major(const ConvShape& s) {
  return s.taps() <= kChannelMajorTaps && s.K >= kChannelMajorChannels;
}
// Does the ISA's pointwise weight gradient (AVX-512's inner products along the pixels) take a 1x1
// stride-1 layer's dw at batch N? (The caller, pointwise_accepts, has checked 1x1 and stride 1.)
bool pointwise_weight_grad_takes(const ConvShape& s, i64 N);

// A whole convolution output's pooling: y, argmax = max_pool2d(conv, pool_k, relu=true) (argmax may be
// null: not wanted); and the gradient of the whole output from the pooled one's (dy, argmax), kept in `keep`
void pool_whole(float* y, std::int32_t* argmax, const float* conv, const ConvShape& s, i64 N, i64 pool_k);
// y = conv(x) by conv_into(y); or pooled (pool_k > 0): the whole convolution into scratch, then pool_whole
template <class ConvInto>
void conv_then_pool(float* y, std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k, ConvInto&& conv_into) {
  if (pool_k == 0) return conv_into(y);
  ScratchFloats conv(size_t(N) * s.K * s.P());
  conv_into(conv.get());
  pool_whole(y, argmax, conv.get(), s, N, pool_k);
}
const float* whole_dconv(std::unique_ptr<float[]>& keep, const float* dy, const std::int32_t* argmax,
                         const ConvShape& s, i64 N, i64 pool_k);

// A first layer (at most kTapRowsChannels input channels)'s backward with its dw and db through the
// ISA's tap_rows_weight_grad (conv2d_tap_rows_impl.hpp), dx (if wanted) through the panels; pooled
// (pool_k > 0), from the convolution's gradient made whole first. False, computing nothing, if the
// layer is not such a layer or its kernel does not fit tap_rows (the caller's own backward then runs).
constexpr i64 kTapRowsChannels = 4;
// A strided layer's forward, or a stride-1 layer's with few output channels on short rows, through
// the ISA's tap_rows_forward (conv2d_tap_rows_impl.hpp: pixel-major, the input values broadcast
// from where they lie); pooled, its output whole and then max_pool2d (so that the fused layer gives
// the separate layers' numbers). False, computing nothing, for a 1x1 kernel at stride 1 or where
// tap_rows_forward declines.
bool tap_rows_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N, i64 pool_k);
bool tap_rows_backward(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                       const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);

// ---- the paths (conv2d.cpp lists them in order) ----
// Every path's forward: y = conv2d(x, w, b), or with pool_k > 0 y, argmax = max_pool2d(that, pool_k,
// relu=true) (argmax may be null: not wanted). Its backward: dx (may be null), dw, db, from dy of
// the convolution, or with pool_k > 0 from dy and argmax of the pooled output; returns false if it
// declines (the next path then runs).

// Few taps (C*R*S <= kDirectTaps): im2col of one image into L1, register-blocked loops (conv2d_direct.cpp)
constexpr i64 kDirectTaps = 32;
// Output rows of 16 pixels or more filling two vectors (of the ISA in use) or 7/8 of their vectors, a
// kernel wider than 1x1, and up to 32 input channels or a kernel of 5x5 or more: the direct forward's
// segments then waste few lanes and it takes the layer at any number of taps (conv2d.cpp)
bool rows_fill_vectors(const ConvShape& s);
void direct_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                         const ConvShape& s, i64 N, i64 pool_k);
bool direct_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                          const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);
// Few output pixels in the batch (N*Ho*Wo <= kFewPixels), more taps than the direct path's, not
// 1x1: the weights used in their own layout (conv2d_few_pixels.cpp)
constexpr i64 kFewPixels = 64;
void few_pixels_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                             const ConvShape& s, i64 N, i64 pool_k);
bool few_pixels_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                              const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);
// Long patches on ISAs with panel kernels (conv2d_panels.cpp drives conv2d_panels_avx512.cpp)
void panels_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                         const ConvShape& s, i64 N, i64 pool_k);
bool panels_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                          const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);
// w: [K, C, R, S] -> w^T rotated by 180 degrees, [C, K, R, S] (taps = R*S): the kernel of dx as a
// convolution of dy (Winograd's dx at stride 1 and 2, the direct forward's dx at stride 1)
inline std::vector<float> flipped_transposed(const float* w, i64 K, i64 C, i64 taps) {
  std::vector<float> flipped(size_t(C) * K * taps);
  for (i64 c = 0; c < C; ++c)
    for (i64 k = 0; k < K; ++k)
      for (i64 t = 0; t < taps; ++t) flipped[size_t((c * K + k) * taps + t)] = w[(k * C + c) * taps + (taps - 1 - t)];
  return flipped;
}

// 3x3 with many channels on both sides: Winograd's F(4x4, 3x3) or F(2x2, 3x3) (conv2d_winograd.cpp).
// winograd_tile: the m of F(m x m, 3x3) for this layer, 0 if the path does not take it.
int winograd_tile(const ConvShape& s, i64 N);
// weight_grad_tile: the m of F(3x3, m x m) for its dw, 0 for the panels' dw
int weight_grad_tile(const ConvShape& s, i64 N);
// Does the path take this layer (pool_k > 0: fused with ReLU and max-pooling), forward or backward?
bool winograd_accepts(const ConvShape& s, i64 N, i64 pool_k, bool backward);
// Its chunks of tiles: about this many bytes of transformed input and products, the forward's
// rounded up to whole panels (or whole vectors) of tiles by up to this factor
// (conv2d_winograd_kernels.cpp's TileChunks; the F(4x4) rule in conv2d_winograd.cpp takes a layer
// only if a panel fits)
constexpr i64 kWinogradChunkBytes = i64(768) << 10;
// Do `tiles` fill three quarters of the panels of `panel` tiles that hold them? (The Winograd rule's
// for a layer, conv2d_winograd.cpp, and for its chunks, conv2d_winograd_kernels.cpp)
inline bool fill_three_quarters(i64 tiles, i64 panel) { return 4 * tiles >= 3 * ((tiles + panel - 1) / panel * panel); }
constexpr double kWinogradChunkRoundUp = 2.5;
// F(3x3, 4x4)'s dw: its chunks' tiles are its products' depth
constexpr i64 kWinogradWeightGradTiles = 64;
// The Winograd dw's group sums (a group's dw products, [a^2][K][C] each): at most about this many
// bytes (512->512 by F(3x3, 4x4) in 8 groups would take 300 MB)
constexpr i64 kWinogradSumsBytes = i64(64) << 20;
void winograd_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N, i64 pool_k);
bool winograd_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                            const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);
// The specification, seven nested loops (conv2d_ref.cpp)
void reference_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N, i64 pool_k);
bool reference_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                             const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k);

}  // namespace cnnfast
