// conv2d's Winograd path, for 3x3 convolutions with many channels on both sides (a CIFAR-style or
// VGG-style middle layer): F(2x2, 3x3) does 2.25x fewer multiply-adds than any direct method, and
// F(4x4, 3x3) 4x fewer, which is how it beats libraries that already run the direct convolution
// near the FMA peak. The kernels (the transforms and the 16 or 36 products) are per ISA, in
// conv2d_winograd_kernels.cpp. winograd_tile below chooses F(4x4) where enough 4 x 4 tiles cover
// the output with little waste; F(2x2) elsewhere.
// - Forward: the kernel; with a 2x2 pool, F(4x4) at stride 1 pools its output tiles as it writes them, else
//   the convolution's output goes into scratch, then through max_pool2d's kernel (either way the
//   same y and argmax as the separate layers, bit for bit).
// - Backward: dx is a convolution too, of dy (zero-padded by 2 - pad) with the weights
//   flipped and transposed ([C, K, 3, 3]): the same kernel (with dx's own tile). dw by
//   F(3x3, 4x4) or F(3x3, 2x2), Winograd's algorithm transposed (the kernels file says how;
//   weight_grad_tile below says where), else through the panels' backward (without dx).
// - Stride 2: F(4x4) through the input's four phases (their kernels 2x2, 2x1, 1x2 and 1x1 taps), 81
//   products a 4 x 4 block of outputs for 144 multiply-adds, and dx by the same products transposed
//   (the kernels file says how); dw and db through the panels' backward (without dx).
// Numbers: the transforms add and subtract up to 16 terms (F(4x4): 36, with factors up to 8 and
// 1/24) before and after the product, so results differ from the direct paths' by float roundings:
// about 2e-7 of the largest output for F(2x2), 5e-6 for F(4x4), 3e-6 for stride 2 (tests: 1e-4 of
// the largest).
#include <algorithm>
#include <atomic>
#include <vector>

#include "conv2d_common.hpp"
#include "isa.hpp"

namespace cnnfast {

// dw by F(3x3, 2x2) from this many channels in and out, where F(3x3, 4x4) does not serve, on the
// ISAs whose table says so (not AVX-512: its panels' dw was faster, 2.6 against 3.1 ms on 128->256
// 4x4, 5.1 against 6.5 on 96->96 12x12);
// below, its transforms and packing cost more than the products save (AVX2, batch 32, one thread,
// dw alone: 16->32 on 32x32 5.0 ms against the panels' 3.3; 32->64 on 16x16 even; 96->96 on
// 12x12 6.7 against 7.8; 128->256 on 4x4 3.3 against 4.2)
constexpr i64 kWinogradWeightGradChannels = 64;
// dw by F(3x3, 4x4) from this many channels in and out (weight_grad_tile)
constexpr i64 kWinogradWeightGradTileChannels = 32;

// 3x3 with at least kWinogradChannels channels in and out, padding up to 2 (dx is then a
// convolution of dy padded by 2 - pad) and at least 32 tiles (fewer do not pay for transforming
// the weights: 128->256 on 4 x 4 at batch 1 took 0.41 ms against the panels' 0.27). The same
// answer with and without a pool, so that the fused layer gives the separate layers' numbers.
// An odd output computes a row and a column of tiles to throw away: F(2x2) takes one (where F(4x4)
// does not) from as many input channels as F(4x4) does (below), 32 at least, and kWinogradOddTiles
// tiles (AVX2 at batch 128 on 9 x 9: 16->16 0.78-0.87x the panels' speed, 32->32 1.14-1.17x). AVX-512
// and AVX2 on the Zen 5, one thread, against the panels: 80->80 on 9 x 9 at batch 2, 4, 8 and 128
// 0.78x, 0.96x, 1.25x and 1.30x the speed on AVX-512 (0.96x, 1.17x, 1.26x, 1.41x on AVX2); 64->64
// on 13 x 13 at batch 2 and 128 1.10x, 1.31x (1.28x, 1.39x); 128->128 on 17 x 17 at batch 32 1.35x
// (1.63x); 256->256 on 9 x 9 at batch 4 and 32 0.87x, 0.99x (1.27x, 1.49x); on two threads, batch
// 32 and 128, 0.91-1.30x on AVX-512 (within its noise but 128->128 on 13 x 13, 1.30x), 1.17-1.51x on
// AVX2. Its backward stays the panels' (winograd_accepts). But the default model's
// conv2 (11 x 11, pooled) on AVX2 at batch 1 0.37-0.68x: its 36 tiles are too few (and from 4
// images F(4x4) takes it; on AVX2 at batch 128 F(2x2) was slower there, 6.4 against 5.1 ms forward
// and 14 against 10 ms backward, than the panels before F(4x4) served odd outputs).
// The tiles must also fill three quarters of the panels its products take them in (AVX-512: 32
// tiles a panel): 96->96 on 12 x 12 at batch 1, 36 tiles in two panels of 32, went 0.72-0.77x the
// time forward and 0.75-0.78x backward through the panels (one AVX-512 thread and two).
// F(4x4) also on odd outputs (backward: winograd_accepts below), from as many input channels as the ISA's table
// says: the default model's conv2 (11 x 11 in 12 x 12) took 0.54-0.62x the panels' time alone and
// 0.85-0.93x fused with ReLU and pooling (AVX2, batch 32-1,000, 1-2 threads); on AVX-512 0.71-0.76x
// alone but 0.90-1.03x fused at batch 128-1,000 (1.25x at batch 32 on two threads), against its own
// panels kernel, and the fused layer must give the separate layers' numbers: AVX-512 keeps the panels
// below 48 channels in. From 48, F(4x4) took 0.48-0.58x the panels' time there (48->96 and 96->192 on
// 7 x 7, 48->48 and 64->128 on 15 x 15, 64->64 on 11 x 11; batch 32/128, 1-2 threads).
// F(4x4) where those hold for 4 x 4 tiles, they cover at most 1.35x the output (14 x 14 in 16 x 16:
// 1.31x, 0.75-0.85x F(2x2)'s time at batch 32/128 on one thread, AVX2 and AVX-512; 18 x 18 0.78-0.91x,
// 30 x 30 0.73-0.74x; 10 x 10, 1.44x, not measured) and a panel of them fits its chunks (about 768 KB
// of transformed input and products, up to 2.5x that when rounded up to whole panels:
// conv2d_winograd_kernels.cpp's TileChunks). 128->256 on 4 x 4 (a tile an image) at batch 32/128
// took 1.10-1.34x F(2x2)'s time on AVX-512 with chunks of 14 tiles in panels of 32 (1.5x allowed),
// 0.75-0.83x with whole panels; 96->96 on 12 x 12 (rows of 3 tiles) 0.80-0.88x (was 0.86-0.90x).
// Else F(2x2).
constexpr i64 kWinogradChannels = 16, kWinogradTiles = 32, kWinogradOddTiles = 128;
// F(4x4)'s panels may be 1.25x that (2.4 MB of AVX-512's 32 tiles) where the products take all the
// input channels at once (up to 320): against F(2x2), Zen 5, AVX-512, batch 32/128, 1-2 threads,
// 256->256 on 4 x 4 1.18-1.54x the speed forward and 0.95-1.34x backward, on 8 x 8 1.11-1.37x and
// 1.09-1.10x, 192->256 on 8 x 8 1.27-1.46x and 1.07-1.08x. Not beyond: 320->320 on 4 x 4 (3 MB)
// ran 0.86-0.87x at batch 32; nor past 320 channels: AVX2's 512->512 (2.4 MB) 0.82x.
constexpr double kWinogradPanelRoundUp = 1.25;
// Stride 2 through the input's phases from this many channels in and twice as many out: below, the
// transforms cost what the products save. Against the panels (AMD EPYC Zen 4, batch 32/128, 1-2
// threads): AVX-512 64->128 on 8 x 8 0.70-0.78x the time, 32->64 on 16 x 16 0.87-0.90x, but 32->32
// on 32 x 32 0.99-1.04x (and 16->32 1.1-1.3x, on a busy machine); AVX2 0.73-0.78x, 0.84-0.94x and
// 0.90-1.00x.
constexpr i64 kStride2Channels = 32;
// and up to this many channels in: beyond, a panel of tiles is past 2 MB on AVX2 (and 3.5 MB on AVX-512, which the
// panel rule below leaves out) (Zen 5, batch 32/128, one thread, against the panels: 384->384 and 448->448 to 4 x 4
// 0.93-1.07x, 512->512 0.6-1.04x; up to 352->352 1.03-1.4x on AVX-512 and AVX2)
constexpr i64 kStride2MaxChannels = 352;
// The forward takes stride 2 where a panel of its tiles fits twice what the chunks may round up to:
// 128->256 to 4 x 4 and 8 x 8 and 96->192 to 7 x 7 (panels of 2.8 and 2.1 MB on AVX-512) took
// 0.68-0.86x the panels' time (Zen 5, batch 32/128, 1-2 threads). Its backward (dx by the phases
// transposed) keeps to the chunks: there it took 1.67-1.85x the panels' time.
constexpr double kStride2PanelRoundUp = 2.0;
constexpr i64 kWinogradWaste = 135;  // percent
// F(2x2)'s tiles may cover up to 1.5x an odd output (5 x 5 in 6 x 6: 1.44x) from twice the channels
// it takes odd outputs from. Against the panels, batch 32 and 128, on the Zen 5: AVX2 64->64 to
// 384->384 on 5 x 5 1.09-1.35x the speed on one thread, 1.09-1.37x on two, but 32->32 0.85-0.87x;
// AVX-512 128->128 to 384->384 1.08-1.13x and 0.94-1.19x, but 64->64 0.87x and 0.93x.
constexpr i64 kWinogradOdd2x2Channels = 32, kWinogradWaste2x2 = 150;
std::atomic<int> winograd_tile_limit{4};

// m x m tiles cover at most `waste` percent of the output, and there are kWinogradTiles of them
// (the forward's rule and dw's)
bool tiles_cover(const ConvShape& s, i64 N, i64 m, i64 waste = kWinogradWaste) {
  const i64 Th = (s.Ho + m - 1) / m, Tw = (s.Wo + m - 1) / m;
  return 100 * m * m * Th * Tw <= waste * s.P() && N * Th * Tw >= kWinogradTiles;
}

// 3x3 with kWinogradChannels in and out, whose m x m tiles cover the output (tiles_cover) and fill
// three quarters of the panels their products take them in
bool tiles_fill(const ConvShape& s, i64 N, i64 m, i64 waste = kWinogradWaste) {
  const i64 tiles = N * ((s.Ho + m - 1) / m) * ((s.Wo + m - 1) / m), panel = active_isa().tile_columns;
  return s.R == 3 && s.S == 3 && s.C >= kWinogradChannels && s.K >= kWinogradChannels && tiles_cover(s, N, m, waste) &&
         fill_three_quarters(tiles, panel) && s.P() < (i64(1) << 30);
}

// F(m x m)'s multiplies an output (its tiles' (m + 2)^2 each, over the output they cover) at most 3/4 of the
// panels' taps (9, or those inside the image where the panels skip the padding, skips_padding). On a 2 x 2 output at
// padding 1 an F(2x2) tile does the 4 multiplies an output that the panels do, and transforms the weights into 16 per
// input and output channel besides (4 MB of 512->512 made 16 MB): 512->512 there ran 0.41-0.55x PyTorch's speed by
// F(2x2) on AVX-512 at batch 32/128 (0.73-0.94x AVX2).
bool fewer_multiplies(const ConvShape& s, i64 m) {
  const double tiles = double((s.Ho + m - 1) / m) * double((s.Wo + m - 1) / m);
  const double winograd = double((m + 2) * (m + 2)) * tiles / double(s.P());
  const double panels = 9.0 * (skips_padding(s) ? fraction_inside(s) : 1.0);
  return 4.0 * winograd <= 3.0 * panels;
}

bool winograd_fits(const ConvShape& s, i64 N, i64 m) {
  const i64 odd_channels = active_isa().winograd_odd_outputs_channels;
  const i64 odd_2x2 = std::max(odd_channels, kWinogradOdd2x2Channels);
  const bool even = s.Ho % 2 == 0 && s.Wo % 2 == 0;
  const bool odd =
      m == 4 ? s.C >= odd_channels : s.C >= odd_2x2 && N * ((s.Ho + 1) / 2) * ((s.Wo + 1) / 2) >= kWinogradOddTiles;
  const i64 waste = m == 2 && s.C >= 2 * odd_2x2 ? kWinogradWaste2x2 : kWinogradWaste;
  return s.stride == 1 && s.pad <= 2 && (even || odd) && tiles_fill(s, N, m, waste) && fewer_multiplies(s, m);
}

// The bytes of a panel of stride-2 tiles: its 81 planes of the channels, in or out
double stride2_panel_bytes(const ConvShape& s) {
  return 81.0 * double(std::max(s.C, s.K) + active_isa().gemm->mr) * active_isa().tile_columns * sizeof(float);
}

int winograd_tile(const ConvShape& s, i64 N) {
  if (N <= 0 || s.K <= 0 || s.taps() <= 0) return 0;
  const IsaKernels& isa = active_isa();
  // Stride 2 (forward and dx): F(4x4) through the input's phases (conv2d_winograd_kernels.cpp), 81
  // products a tile where the panels do 144 multiply-adds, on F(4x4)'s terms, from kStride2Channels
  // to kStride2MaxChannels in and twice kStride2Channels out, and where a panel of tiles fits a chunk
  // (its 81 planes of the channels, in or out, within kStride2PanelRoundUp times what the chunks may
  // round up to: beyond, the chunks' whole panels of tiles would be far past the L2; the backward
  // within what they round up to, winograd_accepts)
  if (s.stride == 2) {
    return winograd_tile_limit.load() >= 4 && s.C >= kStride2Channels && s.C <= kStride2MaxChannels &&
                   s.K >= 2 * kStride2Channels && s.pad <= 2 &&
                   stride2_panel_bytes(s) <= kStride2PanelRoundUp * kWinogradChunkRoundUp * kWinogradChunkBytes &&
                   tiles_fill(s, N, 4)
               ? 4
               : 0;
  }
  const i64 Kp = (s.K + isa.gemm->mr - 1) / isa.gemm->mr * isa.gemm->mr;  // (the products' MR is the GEMM's)
  const double panel_bytes = 36.0 * double(s.C + Kp) * isa.tile_columns * sizeof(float);
  const double round_up = (s.C <= 320 ? kWinogradPanelRoundUp : 1.0) * kWinogradChunkRoundUp;
  if (winograd_tile_limit.load() >= 4 && panel_bytes <= round_up * kWinogradChunkBytes && winograd_fits(s, N, 4))
    return 4;
  return winograd_fits(s, N, 2) ? 2 : 0;
}

int set_winograd_tile_limit(int m) { return winograd_tile_limit.exchange(m); }

// dx's convolution: dy padded by 2 - pad, through w flipped and transposed ([C, K, 3, 3])
ConvShape dx_shape(const ConvShape& s) { return ConvShape(s.K, s.Ho, s.Wo, s.C, 3, 3, 2 - s.pad); }

// The forward at stride 1 from the ISA's winograd_forward_channels in and out together: on AVX-512 not 16->16, whose
// transforms weigh as much as its products (Zen 5, batch 32/128, 1-2 threads, against the direct path or the panels:
// 16->16 at padding 2 on 12 x 12 0.65-0.87x the time, 14 x 14 0.71-0.76x, 32 x 32 0.89-0.93x; pooled 0.75-1.04x;
// on 8 x 8 0.93-1.2x), but 16->32 and 16->64 1.12-1.9x the speed with Winograd (AVX2: 16->16 too, 1.07-2.2x).
// At stride 1 an odd output's backward only where its tile and dx's are F(4x4) (dw by F(3x3, 4x4)
// or the panels: F(3x3, 2x2) takes even outputs only), pooled or not (the
// fused layer's dx must be the separate layers'). Against the panels (batch 32/128, one thread):
// 96->192 on 7 x 7 0.62-0.64x the time on AVX-512, 0.74-0.78x AVX2; 48->48 on 15 x 15 0.58x and 0.63x,
// 64->64 on 11 x 11 0.81x and 0.68x, 128->128 on 7 x 7 0.66x and 0.78x.
bool winograd_accepts(const ConvShape& s, i64 N, i64, bool backward) {
  const int tile = winograd_tile(s, N);
  if (tile == 0 || (!backward && s.stride == 1 && s.C + s.K < active_isa().winograd_forward_channels)) return false;
  if (backward && s.stride == 2) return stride2_panel_bytes(s) <= kWinogradChunkRoundUp * kWinogradChunkBytes;
  if (!backward || s.stride != 1 || (s.Ho % 2 == 0 && s.Wo % 2 == 0)) return true;
  return tile == 4 && winograd_tile(dx_shape(s), N) == 4;
}

// dw's m of F(3x3, m x m) on a layer the path took (0: the panels' dw). F(3x3, 4x4) where 4 x 4
// tiles cover at most 1.35x the output, 32 or more of them, with 32+ channels in and out and 96+
// in all (its products' depth is the tiles, not the channels: chunks of about 64 tiles and more).
// Measured against the panels' dw (one thread; AVX2: against F(3x3, 2x2) where it served, from 64
// channels), batch 32: AVX-512 128->256 on 4 x 4 0.62x (batch 128: 0.73x), 64->128 on 8 x 8 0.75x,
// 96->96 on 12 x 12 0.68x, 32->64 on 16 x 16 0.94x; AVX2 0.59x (0.64x), 0.91x, 0.74x, 0.86x. But
// 32->32 on 8 x 8: 1.16-1.17x on AVX-512, 1.28-1.73x on AVX2 (measured before the vectorized
// G^T M G). Else F(3x3, 2x2) where the ISA's table says so, from 64 channels.
int weight_grad_tile(const ConvShape& s, i64 N) {
  const i64 channels = std::min(s.C, s.K);
  if (winograd_tile_limit.load() >= 4 && channels >= kWinogradWeightGradTileChannels &&
      s.C + s.K >= 3 * kWinogradWeightGradTileChannels && tiles_cover(s, N, 4))
    return 4;
  return active_isa().winograd_weight_grad_small_tile && channels >= kWinogradWeightGradChannels ? 2 : 0;
}

void winograd_forward_path(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N, i64 pool_k) {
  const int m = winograd_tile(s, N);
  if (pool_k == 2 && m == 4 && s.stride == 1)  // (pooled from the output transforms, the same numbers)
    return active_isa().winograd_forward_pool2(y, argmax, x, w, b, s, N);
  conv_then_pool(y, argmax, s, N, pool_k, [&](float* out) { active_isa().winograd_forward(out, x, w, b, s, N, m); });
}

bool winograd_backward_path(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                            const std::int32_t* argmax, const ConvShape& s, i64 N, i64 pool_k) {
  const IsaKernels& isa = active_isa();
  const i64 C = s.C, K = s.K;
  std::unique_ptr<float[]> unpooled;
  if (pool_k) dy = whole_dconv(unpooled, dy, argmax, s, N, pool_k);  // d(conv): each dy routed to its argmax
  if (s.stride == 2) {  // dw and db through the panels, dx through the forward's phases transposed
    isa.panels_backward_plain(nullptr, dw, db, x, w, dy, s, N);
    if (dx) isa.winograd_input_grad_stride2(dx, dy, w, s, N);
    return true;
  }
  const int tile = weight_grad_tile(s, N);  // (odd outputs: F(3x3, 4x4) only, F(3x3, 2x2) takes even ones)
  const int dw_tile = (s.Ho % 2 == 0 && s.Wo % 2 == 0) || tile == 4 ? tile : 0;
  if (dw_tile > 0) {
    if (dw) isa.winograd_weight_grad(dw, x, dy, s, N, dw_tile);
    if (db) bias_grad(db, dy, N, K, s.P());
  } else {
    isa.panels_backward_plain(nullptr, dw, db, x, w, dy, s, N);
  }
  if (dx) {
    const std::vector<float> flipped = flipped_transposed(w, K, C, 9);  // w^T rotated: [C, K, 3, 3]
    // (its own tile: dx's shape has other channels and may have another size; F(2x2) at least,
    // dx being as even as y; an odd y's dx by F(4x4), winograd_accepts)
    const ConvShape d = dx_shape(s);
    isa.winograd_forward(dx, dy, flipped.data(), nullptr, d, N, std::max(2, winograd_tile(d, N)));
  }
  return true;
}

}  // namespace cnnfast
