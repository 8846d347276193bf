// Instruction-set dispatch: one table of kernels per instruction set, one of them in use.
//
// Every piece of ISA-specific code lives in a file of its own (listed in CMakeLists.txt) compiled
// once per instruction set (its functions in namespace cnnfast::<isa>, between
// CNNFAST_TARGET_BEGIN and CNNFAST_TARGET_END of isa_target.hpp), and isa_table.cpp, compiled the
// same way, gathers them into that ISA's IsaKernels. cpu_features.cpp picks the best table the CPU
// runs, once, at load; set_isa() (CNNFAST_ISA=... at import) forces another for every kernel.
// Entries an ISA has no kernel of its own for are null: the callers then take the portable path.
//
//   table      x86-64                       AArch64
//   baseline   portable C++ (SSE2)          portable C++ (NEON is part of the base ISA)
//   avx2       AVX2 + FMA
//   avx512     AVX-512 F/VL/DQ/BW
//   neon                                    NEON intrinsics (GEMM micro-kernel)
#pragma once
#include <cstdint>

#include "kernels.hpp"

namespace cnnfast {

struct ConvShape;  // conv2d_common.hpp

// The GEMM micro-kernel (gemm_microkernel*.cpp): c[0:m, 0:n] (+)= sum_k a[k*mr + i] * b[k*nr + j]
// over packed panels of kc steps.
struct MicroKernel {
  int mr, nr;  // register tile: mr rows by nr columns
  void (*run)(long kc, const float* a, const float* b, float* c, long ldc, long m, long n, int accumulate);
};

// A chunk's dy for the AVX-512 panel backward (conv2d_panels_avx512.cpp). Channel-major: the
// value for (image n of the chunk, pixel p, channel k) at by_channel[n*image_stride +
// k*channel_stride + p]. Pixel-major, in panels of nr channels:
// by_pixel[(k / nr)*L*nr + l*nr + k % nr], l = n*P + p, zero for channels K..(next multiple of nr).
struct DyPanels {
  const float* by_channel;
  i64 image_stride, channel_stride;
  const float* by_pixel;
};
// Gives the chunk of images n0..n1, using kl and lk as room for the two layouts (lk null: the pixel-major one is
// not wanted, by_pixel is then null).
struct DyPanelsSource {
  DyPanels (*chunk)(const void* context, i64 n0, i64 n1, float* kl, float* lk);
  const void* context;
};

struct IsaKernels {
  const char* name;   // "baseline", "avx2", "avx512", "neon"
  int vector_floats;  // floats per vector register: 4 (baseline, NEON), 8 (AVX2), 16 (AVX-512)
  const MicroKernel* gemm;

  // conv2d_direct.cpp: the few-tap convolution (see conv2d.cpp)
  // y[k][oh*Wo + ow] = b[k] + sum_t w[k][t] src[tap_offset[t] + oh*Ws + ow] for output rows oh0..oh1
  // (src: the image's PhaseLayout, read in place)
  void (*direct_rows_forward)(float* y, const float* src, i64 Ws, const i64* tap_offset, const float* w, const float* b,
                              i64 K, i64 T, i64 Wo, i64 P, i64 oh0, i64 oh1);
  // dw[k][t] = sum_p dy[k][p] col[t][p]; col: [T, P]
  void (*direct_weight_grad)(float* dw, const float* dy, const float* col, i64 K, i64 T, i64 P);
  // x_n: [C, H, W] -> dst, its PhaseLayout (conv2d_common.hpp) at stride 2 with S >= 2 (planes of
  // plane floats, rows Ws apart): PhaseLayout::copy's
  void (*split_phases2)(float* dst, const float* x, const ConvShape& s, i64 plane, i64 Ws);

  // conv2d_few_pixels_kernels.cpp: the few-pixels path's products (see conv2d_few_pixels.cpp)
  // y: [N, K, P] = b + w [K, T] x col_n [T, ld] (col_n zero past P, ld a multiple of 16)
  void (*few_pixels_forward)(float* y, const float* col, i64 ld, const float* w, const float* b, i64 N, i64 K, i64 T,
                             i64 P);
  // dw: [K, T] = dyt^T x rows (dyt: [L, ldd] zero past K, ldd a multiple of 8; rows: [L, ldr] zero past T,
  // ldr a multiple of 16)
  void (*few_pixels_weight_grad)(float* dw, const float* dyt, i64 ldd, const float* rows, i64 ldr, i64 K, i64 T, i64 L);
  // drows[n*P + p][t] = sum_k dy[n][k][p] w[k][t] (drows: [N*P, ldr]; dy's rows ldd apart, a multiple of 8, zero past
  // P)
  void (*few_pixels_input_grad)(float* drows, i64 ldr, const float* dy, i64 ldd, const float* w, i64 N, i64 K, i64 T,
                                i64 P);

  // conv2d_pointwise_kernels.cpp: a 1x1 stride-1 layer's forward, y: [N, K, P] = b + w [K, C] x_n [C, P]
  // (w[k][c] at w[k*out_stride + c*in_stride]; b may be null), and so its input gradient (w^T, dy)
  void (*pointwise_forward)(float* y, const float* x, const float* w, i64 out_stride, i64 in_stride, const float* b,
                            i64 N, i64 C, i64 K, i64 P);
  // and, AVX-512 only (null elsewhere), its weight gradient: dw: [K, C] and db: [K] (may be null) from
  // x: [N, C, P] and dy: [N, K, P]
  void (*pointwise_weight_grad)(float* dw, float* db, const float* x, const float* dy, i64 N, i64 C, i64 K, i64 P);

  // linear_narrow.cpp: y[n*ldy + o] = b[o] + x[n] . w[o] (o < O) for rows n0..n1: a layer with few outputs, or a
  // block of a wider layer's outputs at a small batch
  void (*linear_forward_rows)(float* y, i64 ldy, const float* x, const float* w, const float* b, i64 n0, i64 n1, i64 I,
                              i64 O);
  // and the backward at a small batch (N of 1 to 8, O > 0): dx [N, I] = dy w for the columns i0..i1 (i0 a multiple of
  // 64), dw [O, I] = dy^T x for the rows o0..o1
  void (*linear_input_grad_columns)(float* dx, const float* dy, const float* w, i64 N, i64 I, i64 O, i64 i0, i64 i1);
  void (*linear_weight_grad_rows)(float* dw, const float* dy, const float* x, i64 N, i64 I, i64 O, i64 o0, i64 o1);

  // int32_range.cpp: low = min(low, a[0:n]), high = max(high, a[0:n])
  void (*int32_range_block)(const std::int32_t* a, i64 n, std::int32_t* low, std::int32_t* high);

  // dropout_mask.cpp: mask[4g + j] for the groups g in [g0, g1)
  void (*dropout_mask_groups)(std::uint8_t* mask, i64 g0, i64 g1, std::uint64_t seed, std::uint32_t threshold);

  // ---- AVX-512 only (null elsewhere) ----
  // max_pool2d_avx512.cpp: one plane of 2x2 windows, forward and (dense) backward; the backward
  // returns false if some argmax is not in its window (the caller then scatters).
  void (*pool2_plane)(float* y, std::int32_t* argmax, const float* x, i64 Ho, i64 Wo, std::int32_t W, bool relu);
  bool (*pool2_backward_plane)(float* dx, const std::int32_t* argmax, const float* dy, i64 H, i64 W, i64 Ho, i64 Wo);

  // ---- every ISA ----
  // conv2d_panels_avx512.cpp on AVX-512, conv2d_panels_portable.cpp elsewhere (drivers in
  // conv2d_panels_impl.hpp): long patches through GEMMs packed straight from the image.
  // Forward: y = conv2d(x), or with pool_k > 0 y, argmax = max_pool2d(conv2d(x), pool_k, relu).
  void (*panels_forward)(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                         const ConvShape& s, i64 N, i64 pool_k);
  // Backward over the first Hu x Wu output pixels, dy from a source (the fused kernel's d(conv))
  void (*panels_backward)(float* dx, float* dw, const float* x, const float* w, DyPanelsSource dy, const ConvShape& s,
                          i64 N, i64 Hu, i64 Wu);
  // Backward of conv2d itself (dy: [N, K, Ho, Wo]), db included (dw, db or dx may be null)
  void (*panels_backward_plain)(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                                const ConvShape& s, i64 N);

  // The same files' transpose: dst[j*ldd + i] = src[i*lds + j] (i < rows, j < cols), 0 for rows <= i < rows_out
  void (*transpose)(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out);

  // conv2d_winograd_kernels.cpp: y = conv2d(x, w, b) for 3x3 kernels by Winograd's F(m x m, 3x3),
  // m = 2 or 4 (b may be null: no bias); its products take the tiles in panels of tile_columns
  void (*winograd_forward)(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N, int m);
  // the same by F(4x4) at stride 1, with ReLU and 2x2 max-pooling: y, argmax (may be null) = max_pool2d(relu(...), 2)
  void (*winograd_forward_pool2)(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                                 const ConvShape& s, i64 N);
  // the columns of the products' register tile (tile_product_impl.hpp's NR): Winograd's panels of
  // tiles, the pointwise path's panels of pixels
  int tile_columns;
  // Winograd takes odd outputs from this many input channels (F(2x2) from 128 tiles, and where its tiles
  // cover up to 1.5x the output from twice this many: conv2d_winograd.cpp)
  i64 winograd_odd_outputs_channels;
  // Winograd's forward at stride 1 takes layers of at least this many channels in and out together
  // (conv2d_winograd.cpp)
  i64 winograd_forward_channels;
  // dw: [K, C, 3, 3] from x and dy by F(3x3, m x m), m = 2 (even Ho and Wo) or 4, and whether
  // F(3x3, 2x2) serves where F(3x3, 4x4) does not (conv2d_winograd.cpp)
  void (*winograd_weight_grad)(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N, int m);
  bool winograd_weight_grad_small_tile;
  // dx: [N, C, H, W] of a stride-2 3x3 convolution from dy and w, by the forward's F(4x4) through
  // the input's phases, transposed
  void (*winograd_input_grad_stride2)(float* dx, const float* dy, const float* w, const ConvShape& s, i64 N);

  // conv2d_tap_rows_impl.hpp (in the panels' per-ISA files): a first layer's dw [K, C, R, S] and
  // db [K] from x and dy ([N, K, Ho, Wo]), the input values broadcast into multiply-adds with dy
  // pixel-major; false (nothing computed) if its sums do not fit the registers (S > 7, more than
  // 4 vectors of K, ...)
  bool (*tap_rows_weight_grad)(float* dw, float* db, const float* x, const float* dy, const ConvShape& s, i64 N);
  // The same file: y = conv2d(x, w, b) for stride 1 or 2, output channels in vectors, the input
  // values broadcast from where they lie (the strided layers' forward, and stride-1 layers of few
  // channels on short rows); false (nothing computed) for a stride over 2, more than 4 vectors of
  // output channels (3 at stride 1) or rows shorter than its tile (8 pixels at stride 1)
  bool (*tap_rows_forward)(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N);

  // conv3x3_pool2.cpp (conv3x3_pool2_avx512.cpp on AVX-512): one channel, 3x3, ReLU, 2x2 pool,
  // window by window in registers.
  // Forward: y, argmax (argmax may be null) = max_pool2d(conv2d(x), 2, relu). Backward: dw, db
  // (no dx); false, computing nothing, if an argmax is outside its window (argmax made by hand).
  void (*conv3x3_pool2_forward)(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                                const ConvShape& s, i64 N);
  bool (*conv3x3_pool2_backward)(float* dw, float* db, const float* x, const float* dy, const std::int32_t* argmax,
                                 const ConvShape& s, i64 N);

  // activations_kernels.cpp: y[i] = tanh(x[i]), y[i] = 1 / (1 + exp(-x[i])) for i < n (one thread)
  void (*tanh_block)(float* y, const float* x, i64 n);
  void (*sigmoid_block)(float* y, const float* x, i64 n);
  // augment_rows.cpp (every ISA): the elastic field's noise (2 * draws values in [-1, 1) from
  // draws first.. of key), and one output row of the bilinear warp (see augment.cpp)
  void (*augment_noise)(float* noise, i64 draws, std::uint64_t key, std::uint64_t first);
  void (*augment_warp_row)(float* y, const float* x, const float* m, const float* dx, const float* dy, i64 i, i64 C,
                           i64 H, i64 W, float fill);
  // AVX-512 only (null elsewhere: sgemm serves): the elastic field of an image up to 64 pixels
  // wide smoothed by the dense Gaussian matrices (augment.cpp's draw_field)
  void (*augment_smooth)(float* field, float* rows, const float* gw_padded, const float* gh, i64 H, i64 W);
};

// The table in use (the best the CPU runs, unless set_isa chose another).
const IsaKernels& active_isa();
inline const MicroKernel& active_microkernel() { return *active_isa().gemm; }
// Use the named table for every kernel; false if unknown, not compiled in or not run by this CPU.
bool set_isa(const char* name);
// The tables compiled in, in order baseline, then wider (x86-64: avx2, avx512; AArch64: neon).
int compiled_isas(const IsaKernels** out, int max);
bool cpu_supports_isa(const char* name);

}  // namespace cnnfast
