// conv2d's panel path, the drivers (conv2d_panels.cpp lists why and when): long patches through
// GEMMs whose packed operands are built straight from the image and dy, instead of patch rows
// (im2col's way, which writes a patch row of every pixel out to memory and reads it back).
// - Forward (conv2d_forward_panels): packed A, a panel of mr output pixels by the taps, is built
//   from x itself, a copy per run of pixels per tap; with a pool, each chunk's product is pooled
//   from the GEMM's output (put back in the rows' order first where the padding's taps are left
//   out), and the pixels no window reads are not computed.
// - Backward (conv2d_backward_panels): dW's A read in place from a channels-last copy of x where
//   the tiles allow, dx made mr pixels at a time in L1 and added in place (on padded images
//   without the taps that land in the padding); dW over the whole batch at once where the
//   chunks' partial sums would be large.
//
// Included, inside namespace cnnfast::<isa> and its target pragmas, by the files that give the
// ISA's helpers (conv2d_panels_avx512.cpp: AVX-512 intrinsics; conv2d_panels_portable.cpp:
// portable vectors), which define before including it:
//   PanelRun {i64 offset; std::uint32_t lanes;}   a run of a panel's pixels (lanes: a bit mask)
//   pack_patch_panel(ap, src, runs, nruns, tap_offset, T, mr)
//                         ap[t*mr + l] = src[runs[j].offset + l + tap_offset[t]] for l in run j,
//                         0 in lanes no run fills
//   transpose_blocks(dst, ldd, src, lds, rows, cols, rows_out, plus = nullptr)
//                         dst[j*ldd + i] = src[i*lds + j] (+ plus[j], if given) (i < rows, j < cols), 0 for
//                         rows <= i < rows_out
//   add_bias_rows(y, b, K, P), add_patch_rows(xp, rows, ld, offsets, m, s)
//                         y[k][p] += b[k]; xp[offsets[i] + (r*Wp + q)*C + c] += rows[i*ld + (r*S + q)*C + c]
//   forward_microkernel(K)  the forward's MicroKernel for K output channels (AVX-512: 16 x 16 for K <= 16)
//   kNarrowDwTaps, narrow_dw_product(kc, a, b, ldb, c, ldc, m, n, accumulate)
//                         dW's tile for K <= 16 (AVX-512: 16 taps x 16 channels, B's rows ldb apart;
//                         kNarrowDwTaps = 0 elsewhere: the ISA's tile serves)
//   kMaskedPackLanes      the widest panel pack_patch_panel fills with masked vector loads (0: none)
//   kMergeRowRuns         whether the forward's panel may take consecutive output rows that lie
//                         end to end in the image (a 1x1 layer's) as one run
//   kInPlaceMR, kInPlaceNR, microkernel_in_place(kc, a, offsets, b, c, ldc, accumulate)
//                         the ISA's GEMM micro-kernel with A read in place: step k's mr values are
//                         a[offsets[k] + 0..mr), for whole kInPlaceMR x kInPlaceNR tiles
//   gemm_microkernel      the ISA's MicroKernel
// (No include guard: each ISA file includes it once, in its own namespace.)

namespace {

#include "conv2d_loops_impl.hpp"

// x_n: [C, H, W] <-> xp: [H+2p, W+2p, C] (zeros in the border; dx drops it), through transpose_blocks
void to_channels_last(float* xp, const float* x, const ConvShape& s) {
  if (s.pad == 0) return transpose_blocks(xp, s.C, x, s.H * s.W, s.C, s.H * s.W, s.C);
  std::fill(xp, xp + s.Hp * s.Wp * s.C, 0.0f);
  for (i64 h = 0; h < s.H; ++h)
    transpose_blocks(xp + ((h + s.pad) * s.Wp + s.pad) * s.C, s.C, x + h * s.W, s.H * s.W, s.C, s.W, s.C);
}

void from_channels_last(float* dx, const float* xp, const ConvShape& s) {
  if (s.pad == 0) return transpose_blocks(dx, s.H * s.W, xp, s.C, s.H * s.W, s.C, s.H * s.W);
  for (i64 h = 0; h < s.H; ++h)
    transpose_blocks(dx + h * s.W, s.H * s.W, xp + ((h + s.pad) * s.Wp + s.pad) * s.C, s.C, s.W, s.C, s.W);
}

// dwt: [T, ld] (taps in xp's (r, s, c) order) -> dw: [K, C, R, S], 16 channels at a time: their
// columns of dwt transposed into rows, each row's [R*S, C] then transposed into w's [C, R*S]
// (a 1x1 layer's rows are dw's)
// (the blocks of 16 channels over the threads: serial, a 384->384 layer's at batch 32 held back the second thread)
void dw_from_xp_taps(float* dw, const float* dwt, i64 ld, const ConvShape& s) {
  const i64 T = s.taps(), RS = s.R * s.S, blocks = (s.K + 15) / 16;
  const int threads = threads_over(double(s.K) * T, blocks);
  ScratchFloats rows(RS > 1 ? size_t(threads) * 16 * T : 0);
  for_each_over(blocks, threads, [&](i64 block) __attribute__((always_inline)) {
    const i64 k0 = block * 16, kn = std::min<i64>(16, s.K - k0);
    if (RS == 1) return transpose_blocks(dw + k0 * T, T, dwt + k0, ld, T, kn, T);
    float* rows_here = rows.get() + size_t(omp_get_thread_num()) * 16 * T;
    transpose_blocks(rows_here, T, dwt + k0, ld, T, kn, T);  // rows[k][t] = dwt[t][k0 + k]
    for (i64 k = 0; k < kn; ++k) transpose_blocks(dw + (k0 + k) * T, RS, rows_here + k * T, s.C, RS, s.C, RS);
  });
}

// out: [images * Hu * Wu, K] (a chunk's product, pixel-major, without bias, only the rows and
// columns the windows read: Hu = Ho/k*k, Wu = Wo/k*k) ->
// y, argmax: [images, K, Ho/k, Wo/k] = max_pool2d(out + b, k, relu=true), the rule of
// max_pool2d_planes (first maximum, a NaN wins; a maximum not > 0 gives 0 and argmax -1, an
// index oh*Wo + ow into the whole Ho x Wo plane), with a pixel's channels as the vector lanes and
// each window's maximum and index kept in registers (through memory, AVX2 took 3.7 us of a
// single image's 40 us conv2 block, on one thread after the product's two); an image's windows
// are written [Q, K] to window_y / window_argmax, then transposed into place.
void relu_pool_pixel_major(float* y, std::int32_t* argmax, const float* out, const float* b, i64 images, i64 K, i64 Ho,
                           i64 Wo, i64 k, float* window_y, std::int32_t* window_argmax) {
  constexpr i64 L = CNNFAST_VEC_BYTES / 4;
  const i64 Hq = Ho / k, Wq = Wo / k, Q = Hq * Wq, Wu = Wq * k, Pu = Hq * k * Wu;
  for (i64 n = 0; n < images; ++n) {
    for (i64 oh = 0; oh < Hq; ++oh)
      for (i64 ow = 0; ow < Wq; ++ow) {
        // candidate (r, q): its channels at out + at(r, q), its index in the plane pixel(r, q)
        auto at = [&](i64 r, i64 q) { return (n * Pu + (oh * k + r) * Wu + ow * k + q) * K; };
        auto pixel = [&](i64 r, i64 q) { return std::int32_t((oh * k + r) * Wo + ow * k + q); };
        float* yq = window_y + (oh * Wq + ow) * K;  // [Q, K] for now
        std::int32_t* aq = window_argmax + (oh * Wq + ow) * K;
        for (i64 c0 = 0; c0 < K; c0 += L) {  // (the channels past the last whole vector: its first m lanes)
          const i64 m = std::min(L, K - c0);
          auto get = [&](const float* p) { return m == L ? load(p) : load_first(p, m); };
          const vec bias = get(b + c0);
          vec best = get(out + at(0, 0) + c0) + bias;
          ivec index = ivec{} + pixel(0, 0);
          for (i64 r = 0; r < k; ++r)
            for (i64 q = r == 0 ? 1 : 0; q < k; ++q) {
              const vec value = get(out + at(r, q) + c0) + bias;
              const ivec take = pool_takes(value, best);
              best = take ? value : best;
              index = take ? ivec{} + pixel(r, q) : index;
            }
          pool_relu(best, index);
          const vec index_bits = reinterpret_cast<const vec&>(index);  // (int32 stored as float bit patterns)
          if (m == L) {
            store(yq + c0, best), store(reinterpret_cast<float*>(aq + c0), index_bits);
          } else {
            store_first(yq + c0, best, m), store_first(reinterpret_cast<float*>(aq + c0), index_bits, m);
          }
        }
      }
    // [Q, K] -> [K, Q] (argmax's int32 moved as float bit patterns; argmax may be null)
    transpose_blocks(y + n * K * Q, Q, window_y, K, Q, K, Q);
    if (argmax)
      transpose_blocks(reinterpret_cast<float*>(argmax + n * K * Q), Q, reinterpret_cast<const float*>(window_argmax),
                       K, Q, K, Q);
  }
}

// A padded layer's pixel-major product without the taps that fall in the padding (zeros): the
// taps in (r, q, c) order, so that the ones a pixel reads inside the image are runs of consecutive
// taps, one per kernel row (r0..r1, columns q0..q1). A chunk's pixels go in pieces of an output
// row that read the same taps, grouped by those taps (each group for every image of the chunk), so
// that a panel of mr pixels mostly reads one set; a panel reads the union of its pieces' (the extra
// taps read zeros). (Pooled too, the product then put back in the rows' order for the pooling:
// packed in the rows' order, 3x3 at padding 1 on 2 x 2 and 4 x 4, 5x5 and 7x7 on 6 x 6 took
// 1.03-1.40x the time at batch 32-128 on AVX2; on AVX-512 1.22-1.28x (256->256 on 2 x 2, 32->64 5x5
// on 6 x 6), 0.93-1.09x the others (7x7: 0.88x, then 0.99x over 15 rounds); one thread, Zen 5, the
// same bits; batch 1 the same.)
struct PaddedPieces {
  struct Piece {
    i64 image, oh, ow, len, l;  // pixels (oh, ow..ow+len) of the chunk's image; l: their first row in the product
    i64 r0, r1, q0, q1;         // the kernel rows and columns they read inside the image
  };
  std::vector<Piece> pieces;  // in the product's order
  // rows Hu x Wu of `images` images
  PaddedPieces(const ConvShape& s, i64 images, i64 Hu, i64 Wu) {
    std::vector<Piece> image;  // one image's, in row order
    for (i64 oh = 0; oh < Hu; ++oh) {
      const auto r = taps_inside(s, oh, s.H, s.R);
      for (i64 ow = 0; ow < Wu;) {
        const auto q = taps_inside(s, ow, s.W, s.S);
        i64 end = ow + 1;
        while (end < Wu && taps_inside(s, end, s.W, s.S) == q) ++end;
        image.push_back({0, oh, ow, end - ow, 0, r.first, r.second, q.first, q.second});
        ow = end;
      }
    }
    auto taps = [](const Piece& a) { return std::tuple(a.r0, a.r1, a.q0, a.q1); };
    std::stable_sort(image.begin(), image.end(), [&](auto& a, auto& b) { return taps(a) < taps(b); });
    i64 l = 0;
    for (size_t i = 0; i < image.size();) {  // (a group of equal taps for every image, then the next)
      size_t end = i + 1;
      while (end < image.size() && taps(image[end]) == taps(image[i])) ++end;
      for (i64 n = 0; n < images; ++n)
        for (size_t j = i; j < end; ++j) {
          Piece p = image[j];
          p.image = n, p.l = l;
          pieces.push_back(p);
          l += p.len;
        }
      i = end;
    }
  }
};

// A run of a B panel's lanes lane..lane+len: the pixels whose patches start at offset.. in the image
struct PixelRun {
  i64 offset;
  int lane, len;
};
// bp[t*nb + lane] = src[run's offset + (lane - run's lane) + tap_offset[t]] for the lanes of each
// run, 0 in lanes no run fills (runs of a few output rows; nb <= 32)
void pack_pixel_panel(float* bp, int nb, const float* src, const PixelRun* runs, int nruns, const i64* tap_offset,
                      i64 T) {
  if (nruns == 1 && runs[0].len == nb && nb == 32) {  // (one run of whole vectors: fixed-size copies)
    for (i64 t = 0; t < T; ++t) std::memcpy(bp + t * 32, src + runs[0].offset + tap_offset[t], 32 * sizeof(float));
    return;
  }
  const int filled = runs[nruns - 1].lane + runs[nruns - 1].len;
  for (i64 t = 0; t < T; ++t) {
    float* d = bp + t * nb;
    for (int j = 0; j < nruns; ++j) {
      const float* from = src + runs[j].offset + tap_offset[t];
      for (int l = 0; l < runs[j].len; ++l) d[runs[j].lane + l] = from[l];
    }
    for (int l = filled; l < nb; ++l) d[l] = 0.0f;
  }
}

// x: [N, C, H, W], w: [K, C, R, S], b: [K] -> y: [N, K, Ho, Wo], chunked (conv2d_common.hpp's Chunking);
// with pool_k > 0 instead y, argmax: [N, K, Ho/k, Wo/k] = max_pool2d(y, pool_k, relu=true), each
// chunk pooled from its product (the convolution's output is never stored whole, and the
// pixels no window reads, conv2's last row and column, 21 of 121, are not computed)
void conv2d_forward_panels(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N,
                           std::int32_t* argmax, i64 pool_k) {
  const MicroKernel& mk = forward_microkernel(s.K);
  const i64 C = s.C, K = s.K, P = s.P(), T = s.taps();
  const int mr = mk.mr, nr = mk.nr;
  // Padded or strided images go through a zero-bordered planar copy; the others are read in place.
  // With a stride st the copy is split into st x st phases (row % st, column % st), each a plane
  // of Hs x Ws: then a tap (r, q) of the consecutive output pixels of a row reads consecutive
  // floats of phase (r % st, q % st), as at stride 1, and the panels are packed the same way.
  const PhaseLayout layout(s, 0);  // (its tap offsets and its strided copy)
  const i64 st = s.stride, Ws = layout.Ws, plane = layout.plane, image = C * st * st * plane;
  const std::vector<i64>& tap_offset = layout.tap_offset;
  const bool copied = s.pad > 0 || st > 1;
  // (see by_channels below; pixel-major and padded: the taps in the padding skipped (PaddedPieces), w and the tap
  // offsets in (r, q, c) order)
  const bool one_tile = K <= mk.mr, channel_major = panels_channel_major(s) || one_tile,
             skip = !channel_major && skips_padding(s);
  // where the copy puts input row h in its channel's plane (stride 1)
  std::vector<i64> row_place(static_cast<size_t>(s.H));
  for (i64 h = 0; h < s.H; ++h) row_place[size_t(h)] = (h + s.pad) * Ws;
  // One depth block while a panel's A (T x mr) and B (T x nr) fit L1 and L2 together (conv2:
  // T = 288, measured 3% faster than two blocks of 144); sgemm's blocks beyond that.
  const i64 kc = T <= 512 ? T : depth_block(T), Kpad = (K + nr - 1) / nr * nr;
  // op(B) = w^T [T, K], packed per depth block: panel j0 of block k0 is [kcb][nr], the transpose of
  // w's rows j0.. (zeros past K), through the ISA's register transposes (for a single image the
  // packing is a fifth of the call: generic scalar packing was)
  auto pack_weights = [&](float* wp, int threads) {
    if (skip) {  // (taps in (r, q, c) order: nr rows of w transposed at once, then their rows of taps moved into place)
#pragma omp parallel for num_threads(threads) if (threads > 1)
      for (i64 j0 = 0; j0 < Kpad; j0 += nr) {
        ScratchFloats panel(size_t(T) * nr);
        transpose_blocks(panel.get(), nr, w + std::min(j0, K) * T, T, std::max<i64>(0, std::min<i64>(nr, K - j0)), T,
                         nr);
        for (i64 t = 0; t < T; ++t) {
          const i64 k0 = t / kc * kc, kcb = std::min(kc, T - k0);
          std::memcpy(wp + k0 * Kpad + j0 * kcb + (t - k0) * nr, panel.get() + (t % C * s.R * s.S + t / C) * nr,
                      sizeof(float) * size_t(nr));
        }
      }
      return;
    }
    for (i64 k0 = 0; k0 < T; k0 += kc) {
      const i64 kcb = std::min(kc, T - k0);
      for (i64 j0 = 0; j0 < Kpad; j0 += nr)
        transpose_blocks(wp + k0 * Kpad + j0 * kcb, nr, w + std::min(j0, K) * T + k0, T,
                         std::max<i64>(0, std::min<i64>(nr, K - j0)), kcb, nr);
    }
  };

  const i64 Hu = pool_k > 0 ? s.Ho / pool_k * pool_k : s.Ho, Wu = pool_k > 0 ? s.Wo / pool_k * pool_k : s.Wo,
            Pu = Hu * Wu;
  const Chunking ch(N, Pu);
  const int nt = std::max(1, std::min<int>(threads_for(double(N) * K * Pu * T), int(ch.chunks)));
  // Few taps (<= 160: 8->64 3x3, 72), unpooled: the product made channel-major, y's rows straight
  // from the ISA's GEMM tile (A: mr output channels, B: nr output pixels packed from the image),
  // where the pixel-major product's transposition into y took half the time of a 3->64 5x5 layer
  // on 48 x 48 at batch 128 (measured before first layers went to the direct path). (Deeper patches keep the
  // pixel-major product: the transposition is a smaller part there; and 16 output channels fill a pixel-major tile
  // exactly, where channel-major tiles of 6 took 40.8 against 33.4 ms for 3->16 7x7 at batch 128 on AVX2; and 32
  // channels are too few too: a stride-2 16->32 layer on 32 x 32, 2.24 -> 2.58 ms, AVX2, batch 128.) Output channels
  // that fit one tile of the forward's own kernel (AVX-512's 16 x 16 for K <= 16: LeNet's 6->16) are made channel-major
  // at any depth: the same product with its operands' roles swapped (A: w, B: 16 pixels), where the pixel-major
  // product's transposition into y was a sixth of a 3->16 7x7 layer's time.
  const MicroKernel& gm = one_tile ? mk : gemm_microkernel;
  const bool by_channels = pool_k == 0 && channel_major;
  std::vector<i64> rqc_offset(skip ? size_t(T) : 0);
  for (i64 c = 0; skip && c < C; ++c)
    for (i64 rq = 0; rq < s.R * s.S; ++rq) rqc_offset[size_t(rq * C + c)] = tap_offset[size_t(c * s.R * s.S + rq)];
  const i64 Ka = (K + gm.mr - 1) / gm.mr * gm.mr;
  ScratchFloats wa(by_channels ? size_t(Ka) * T : 0);  // A: w in panels of mr channels, [Ka/mr][T][mr]
  for (i64 k0 = 0; by_channels && k0 < Ka; k0 += gm.mr)
    transpose_blocks(wa.get() + k0 * T, gm.mr, w + std::min(k0, K) * T, T,
                     std::max<i64>(0, std::min<i64>(gm.mr, K - k0)), T, gm.mr);
  const size_t padded_floats = copied ? size_t(ch.per_chunk) * image : 0, chunk_pixels = size_t(ch.per_chunk) * Pu;
  const size_t pooled_floats = pool_k > 0 ? size_t(K) * (s.Ho / pool_k) * (s.Wo / pool_k) : 0;
  // a chunk's product, and (skip) its copy in the rows' order after it
  const size_t product_floats = chunk_pixels * K, products_floats = product_floats * (skip ? 2 : 1);
  const size_t scratch_per_thread = padded_floats + size_t(T) * mr + products_floats + 2 * pooled_floats;
  ScratchFloats scratch(size_t(nt) * scratch_per_thread);           // (each value written before it is read, but:)
  zero_each(scratch.get(), nt, scratch_per_thread, padded_floats);  // (each thread's copy of its images)
  // A single chunk (one image of 512+ pixels, or a few small ones): its panels of pixels over the
  // threads instead, each with a packed A of its own (each panel's product is the same either way;
  // from less work where the core multiplies less per cycle: split_work)
  const int inner = ch.chunks == 1 && double(N) * K * Pu * T >= split_work()
                        ? threads_over(double(N) * K * Pu * T, (N * Pu + mr - 1) / mr)
                        : 1;
  ScratchFloats inner_ap(inner > 1 ? size_t(inner) * T * std::max(mr, gm.nr) : 0);
  // the pixel-major product's packed weights: split over the threads, one copy each, packed by the
  // thread that reads it from its own cache (with one copy the split was no faster: mnist conv2 at
  // batch 1 on two AVX2 threads 0.050 ms; with two, 0.051 -> 0.034)
  const int copies = by_channels ? 0 : inner;
  ScratchFloats wp(size_t(copies) * T * Kpad);
  if (copies > 1) {
#pragma omp parallel num_threads(copies)
    pack_weights(wp.get() + size_t(omp_get_thread_num()) * T * Kpad, 1);
  } else if (copies == 1) {
    pack_weights(wp.get(), nt);
  }
  std::vector<i64> box_offset(skip ? size_t(std::max(nt, inner)) * T : 0);  // a panel's taps, per thread
  ScratchFloats bp(by_channels ? size_t(nt) * T * gm.nr : 0);               // B: a panel of nr pixels, per thread
  for_each_chunk(ch.chunks, nt, [&](i64 chunk) __attribute__((always_inline)) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * Pu;
    float* padded = scratch.get() + size_t(omp_get_thread_num()) * scratch_per_thread;
    float* ap = padded + padded_floats;  // [T, mr]
    float* out = ap + size_t(T) * mr;    // [L, K]
    const float* src = x + n0 * C * s.H * s.W;
    if (copied) {  // (the border and the phases' spare row and column: zeroed once, never written)
      for (i64 n = n0; n < n1; ++n) {
        if (st > 1) {  // (split into its phases)
          layout.copy(padded + (n - n0) * image, x + n * C * s.H * s.W, s);
          continue;
        }
        for (i64 c = 0; c < C; ++c) {
          const float* channel = x + (n * C + c) * s.H * s.W;
          float* to = padded + (n - n0) * image + c * plane;
          for (i64 h = 0; h < s.H; ++h) copy_row(to + row_place[size_t(h)] + s.pad, channel + h * s.W, s.W);
        }
      }
      src = padded;
    }
    // x read in place and the batch's x past 1 MB: the chunk's next image (next: its index in the chunk) asked into the
    // cache while this one's panels are made, the slice of its lines as far through it as the panel's m pixels from at
    // are through this image (80->80 1x3 on 11 x 11 at batch 128, x 5 MB: the packing waited on memory, 1.2x the time
    // per image of batch 32; 1.08-1.53x faster now on one and two threads, AVX-512 and AVX2; the default model's conv2
    // at batch 128 1.03-1.14x. A smaller x is left to the cache: the same conv2 at batch 32, 0.7 MB, gained nothing
    // from it). The channel-major panels likewise: 1x3 48->64 on 12 x 12 at batch 128 (x 3.5 MB), 1.22-1.27x faster on
    // AVX2, one thread (Zen 3, where its pack_pixel_panel had been 38% of the time, most of it waiting on the loads;
    // two threads and AVX-512 unmeasured)
    const bool fetch_ahead = !copied && double(N) * double(image) * sizeof(float) > double(1 << 20);
    auto fetch_next_image = [&](i64 next, i64 at, i64 m) __attribute__((always_inline)) {
      if (!fetch_ahead || next >= n1 - n0) return;
      const char* from = reinterpret_cast<const char*>(src + next * image);
      const i64 lines = image * i64(sizeof(float)) / 64 + 1;
      for (i64 i = at * lines / Pu, end = std::min(lines, (at + m) * lines / Pu + 1); i < end; ++i)
        __builtin_prefetch(from + i * 64);
    };
    if (by_channels) {
      float* b_mine = bp.get() + size_t(omp_get_thread_num()) * T * gm.nr;  // (this chunk's thread's)
      for (i64 n = n0; n < n1; ++n) {
        float* yn = y + n * K * P;
        const i64 panels = (P + gm.nr - 1) / gm.nr;
        for_each_over(panels, inner, [&](i64 panel) __attribute__((always_inline)) {
          const i64 p0 = panel * gm.nr;
          float* b_panel = inner > 1 ? inner_ap.get() + size_t(omp_get_thread_num()) * T * gm.nr : b_mine;
          const int m = int(std::min<i64>(gm.nr, P - p0));
          PixelRun runs[32];
          int nruns = 0;
          for (int i = 0; i < m;) {  // lanes i.. of one output row
            const i64 oh = (p0 + i) / s.Wo, ow = (p0 + i) % s.Wo;
            const int len = int(std::min<i64>(m - i, s.Wo - ow));
            runs[nruns++] = {(n - n0) * image + oh * Ws + ow, i, len};
            i += len;
          }
          fetch_next_image(n + 1 - n0, p0, m);
          // (the ISA's panel packing: masked vector loads; AVX2's masked loads a run, tried in pack_pixel_panel's place
          // for 1x3 48->64 on 12 x 12, took 1.2-1.5x its copies' time at batch 32, Zen 3)
          if (gm.nr <= kMaskedPackLanes) {
            PanelRun lanes[32];
            for (int j = 0; j < nruns; ++j)
              lanes[j] = {runs[j].offset - runs[j].lane, std::uint32_t(((1u << runs[j].len) - 1) << runs[j].lane)};
            pack_patch_panel(b_panel, src, lanes, nruns, tap_offset.data(), T, gm.nr);
          } else {
            pack_pixel_panel(b_panel, gm.nr, src, runs, nruns, tap_offset.data(), T);
          }
          for (i64 k0 = 0; k0 < K; k0 += gm.mr)
            gm.run(T, wa.get() + k0 * T, b_panel, yn + k0 * P + p0, P, std::min<i64>(gm.mr, K - k0), m, 0);
          // a single image's panels over the threads: + b by the thread that made the panel (one
          // thread's pass over the image after the panels was a third of a 3->64 5x5 image on two)
          for (i64 k = 0; inner > 1 && k < K; ++k) add_bias_rows(yn + k * P + p0, b + k, 1, m);
        });
        if (inner == 1) add_bias_rows(yn, b, K, P);
      }
      return;
    }
    const PaddedPieces pieces = skip ? PaddedPieces(s, n1 - n0, Hu, Wu) : PaddedPieces(s, 0, 0, 0);
    // A panel of a padded layer: the pixels l0.. of the pieces, packed with the taps the union of their pieces reads
    // (box: room for the taps' offsets), the product run over those taps, one run of taps per kernel row
    auto padded_panel = [&](float* ap_here, const float* w_here, i64* box, i64 l0) __attribute__((always_inline)) {
      const int m = int(std::min<i64>(mr, L - l0));
      const std::vector<PaddedPieces::Piece>& all = pieces.pieces;
      auto piece = std::upper_bound(all.begin(), all.end(), l0, [](i64 l, const auto& p) { return l < p.l; }) - 1;
      PanelRun runs[16];
      int nruns = 0;
      i64 r0 = s.R, r1 = 0, q0 = s.S, q1 = 0;
      for (; piece != all.end() && piece->l < l0 + m; ++piece) {
        const i64 from = std::max(l0, piece->l), len = std::min(l0 + m, piece->l + piece->len) - from;
        const i64 lane = from - l0;
        runs[nruns++] = {piece->image * image + piece->oh * Ws + piece->ow + (from - piece->l) - lane,
                         std::uint32_t(((1u << len) - 1) << lane)};
        if (piece->r0 < piece->r1 && piece->q0 < piece->q1)
          r0 = std::min(r0, piece->r0), r1 = std::max(r1, piece->r1), q0 = std::min(q0, piece->q0),
          q1 = std::max(q1, piece->q1);
      }
      if (r0 >= r1) {  // (the pixels read nothing but padding: 0, and y = b)
        std::fill(out + l0 * K, out + (l0 + m) * K, 0.0f);
        return;
      }
      const i64 width = (q1 - q0) * C;  // (the taps of a kernel row the panel reads)
      for (i64 r = r0; r < r1; ++r) std::copy_n(rqc_offset.data() + (r * s.S + q0) * C, width, box + (r - r0) * width);
      pack_patch_panel(ap_here, src, runs, nruns, box, (r1 - r0) * width, mr);
      bool first = true;
      for (i64 r = r0, a = 0; r < r1; ++r)
        for (i64 t = (r * s.S + q0) * C, end = t + width; t < end;) {  // (split where w's packed depth blocks end)
          const i64 k0 = t / kc * kc, kcb = std::min(kc, T - k0), len = std::min(end, k0 + kcb) - t;
          for (i64 j0 = 0; j0 < K; j0 += nr)
            mk.run(len, ap_here + a * mr, w_here + k0 * Kpad + j0 * kcb + (t - k0) * nr, out + l0 * K + j0, K, m,
                   std::min<i64>(nr, K - j0), !first);
          first = false, t += len, a += len;
        }
    };
    for_each_over((L + mr - 1) / mr, inner, [&](i64 panel) __attribute__((always_inline)) {
      const i64 l0 = panel * mr;
      float* ap_here = inner > 1 ? inner_ap.get() + size_t(omp_get_thread_num()) * T * mr : ap;
      const float* w_here = wp.get() + size_t(inner > 1 ? omp_get_thread_num() : 0) * T * Kpad;
      if (skip) return padded_panel(ap_here, w_here, box_offset.data() + size_t(omp_get_thread_num()) * T, l0);
      PanelRun runs[16];
      const int m = int(std::min<i64>(mr, L - l0));
      fetch_next_image(l0 / Pu + 1, l0 % Pu, m);
      int nruns = 0;
      for (int i = 0; i < m;) {  // lanes i.. of one (image, output row)
        const i64 l = l0 + i, n = l / Pu, oh = l % Pu / Wu, ow = l % Pu % Wu;
        const int len = int(std::min<i64>(m - i, Wu - ow));
        const PanelRun run = {n * image + oh * Ws + ow - i, std::uint32_t(((1u << len) - 1) << i)};
        if (kMergeRowRuns && nruns > 0 && runs[nruns - 1].offset == run.offset)  // the row before ends here
          runs[nruns - 1].lanes |= run.lanes;  // (a 1x1 layer's rows: one load per channel, not one per row)
        else
          runs[nruns++] = run;
        i += len;
      }
      pack_patch_panel(ap_here, src, runs, nruns, tap_offset.data(), T, mr);
      for (i64 k0 = 0; k0 < T; k0 += kc) {
        const i64 kcb = std::min(kc, T - k0);
        for (i64 j0 = 0; j0 < K; j0 += nr)
          mk.run(kcb, ap_here + k0 * mr, w_here + k0 * Kpad + j0 * kcb, out + l0 * K + j0, K, m,
                 std::min<i64>(nr, K - j0), k0 > 0);
      }
    });
    // (skip: the product in the pieces' order, put back in the rows' order first, pooled or not; each piece transposed
    // straight into its place in y instead, pieces of 1-3 pixels, took 12% of a 192->192 layer's forward on 5 x 5 under
    // a wider rule)
    const float* rows = out;
    if (skip) {
      float* in_order = out + product_floats;
      for (const PaddedPieces::Piece& p : pieces.pieces)
        std::memcpy(in_order + (p.image * Pu + p.oh * Wu + p.ow) * K, out + p.l * K, sizeof(float) * p.len * K);
      rows = in_order;
    }
    if (pool_k > 0) {
      float* window_y = out + products_floats;  // (then the windows' argmax, as scratch_per_thread)
      relu_pool_pixel_major(y + n0 * pooled_floats, argmax ? argmax + n0 * pooled_floats : nullptr, rows, b, n1 - n0, K,
                            s.Ho, s.Wo, pool_k, window_y, reinterpret_cast<std::int32_t*>(window_y + pooled_floats));
      return;
    }
    // y_n[k][p] = rows[(n - n0)*P + p][k] + b[k], + b in the transposition's registers (added to y's rows after it,
    // rows of fewer than 16 pixels each read back what its masked stores had just written, a stall each: 28% of a 1x1
    // 224->672 layer's forward on 3 x 3, AVX-512, batch 128)
    for (i64 n = n0; n < n1; ++n) {
      float* yn = y + n * K * P;
      for_each_over((K + 15) / 16, inner, [&](i64 blk) __attribute__((always_inline)) {  // (16 channels a time)
        const i64 k0 = blk * 16, kn = std::min<i64>(16, K - k0);
        transpose_blocks(yn + k0 * P, P, rows + (n - n0) * P * K + k0, K, P, kn, P, b + k0);
      });
    }
  });
}

// ---- backward: both GEMMs fed straight from the image and dy ----
// The patch-row path writes every pixel's patch row (rows[L, RSC], 2.2 MB per chunk for conv2)
// and the input gradient's drows[L, RSC] out to memory and reads them back. Here neither exists:
// - dW^T[RSC, K] = rows^T dy: the GEMM's packed A (mr taps x a depth block of pixels) is built
//   from the chunk's channels-last image xp[n][Hp][Wp][C] with pack_patch_panel (for a pixel,
//   mr consecutive taps (r, q, c..c+mr-1) are contiguous in xp: one or two runs), and its
//   B is dy pixel-major in panels of nr channels, read in place (no packing).
// - drows = dy^T wt is made mr pixels at a time into a [mr, RSC] tile in L1 (A packed from
//   channel-major dy, again one copy per run of pixels per channel; B is wt packed once
//   per call), and added into the chunk's zero-bordered input gradient at once (row2im).

// The plain source: dy itself (channel-major as it is), transposed into the pixel-major panels.
// The bias gradient's lanes of each row (row_lanes) are taken on the way, while the rows are in cache (if lanes is
// given).
// (a DyPanelsSource's context)
struct GatherDyPanels {
  const float* dy;
  i64 K, P;
  int nr;
  float* lanes;  // [N, K, 16], or null
  static DyPanels chunk(const void* context, i64 n0, i64 n1, float*, float* lk) {
    const GatherDyPanels& g = *static_cast<const GatherDyPanels*>(context);
    const float* dy = g.dy;
    const i64 K = g.K, P = g.P, nr = g.nr, L = (n1 - n0) * P;
    float* lanes = g.lanes;
    for (i64 n = n0; n < n1; ++n) {
      for (i64 k0 = 0; lk && k0 < K; k0 += nr)  // [nr channels, P] -> [P, nr], zeros past K
        transpose_blocks(lk + k0 * L + (n - n0) * P * nr, nr, dy + (n * K + k0) * P, P, std::min<i64>(nr, K - k0), P,
                         nr);
      for (i64 k = 0; lanes && k < K; ++k) row_lanes(lanes + (n * K + k) * 16, dy + (n * K + k) * P, P);
    }
    return {dy + n0 * K * P, K * P, P, lk};
  }
};

// (partial dW^T floats a chunk pixel from which dW is made over the whole batch at once: see conv2d_backward_panels)
constexpr double kWholeBatchDwFloats = 4096, kWholeBatchDwCopies = 8.0 * (1 << 20);

// dw and dx (either may be null); chunked likewise, the weight gradient summed
// chunk by chunk in chunk order, so the results do not depend on the thread count (one_chunk: the
// whole batch as one chunk). Only the
// output pixels in the first Hu rows and Wu columns count (the fused kernel's dy is zero
// elsewhere); dy_of's chunks hold P = Hu*Wu pixels an image.
void conv2d_backward_panels(float* dx, float* dw, const float* x, const float* w, DyPanelsSource dy_of,
                            const ConvShape& s, i64 N, i64 Hu, i64 Wu, bool one_chunk = false) {
  const MicroKernel& mk = gemm_microkernel;
  const i64 C = s.C, K = s.K, P = Hu * Wu, T = s.taps(), S = s.S;
  const int mr = mk.mr, nr = mk.nr;
  const i64 Kp = (K + nr - 1) / nr * nr, Tp = (T + nr - 1) / nr * nr, image = s.Hp * s.Wp * C;
  Chunking ch(N, P);
  // dW over the whole batch as one chunk (its panels of taps over the threads) where each chunk's partial dW^T would
  // be large against the chunk's pixels: the partials' writing and summing took a fifth of a 384->384 layer's dW on
  // 3 x 3 images at batch 32, whose chunks are 8 images, 72 pixels, of a 1,327,104-float partial. dx (if asked) is
  // made chunk by chunk first, alone. Measured (Zen 5, AVX-512, batch 32, time before / after, 1-2 threads): that
  // layer's backward 1.17-1.19x; stride-2 256->512 on 4 x 4 1.33-1.42x (batch 128 1.06-1.15x); 1x1 1024->256 on
  // 2 x 2 1.00-1.41x. Below the limit it was mixed: 160->160 on 6 x 6 (800 floats a pixel) 1.05-1.26x, but 1x1
  // 1024->256 at batch 128 (2,048) 0.85x on two threads, where dy's copy for the whole batch is made on one. Only while
  // the whole batch's copies (x channels-last, dy both ways) stay within kWholeBatchDwCopies floats: measured on
  // images of 2 x 2 to 4 x 4, where they take 1-2M at batch 128; a 512->1024 layer on 14 x 14 at batch 256 would take
  // 59M (240 MB), where its chunks take 10 MB a thread.
  const double whole_copies = double(N) * (double(image) + 2.0 * double(P) * double(Kp));
  if (dw && !one_chunk && ch.chunks > 1 && double(T) * Kp >= kWholeBatchDwFloats * double(ch.per_chunk * P) &&
      whole_copies <= kWholeBatchDwCopies) {
    if (dx) conv2d_backward_panels(dx, nullptr, x, w, dy_of, s, N, Hu, Wu);
    return conv2d_backward_panels(nullptr, dw, x, w, dy_of, s, N, Hu, Wu, true);
  }
  if (one_chunk) ch.per_chunk = N, ch.chunks = 1;
  const int nt = std::max(1, std::min<int>(threads_for((dx && dw ? 2.0 : 1.0) * N * K * P * T), int(ch.chunks)));
  // dW's A, tap panel by tap panel: the runs of taps (t = (r*S + q)*C + c) that are contiguous in xp;
  // when no panel straddles two kernel rows r (and tiles are whole), A is read in place instead
  const bool in_place = mr == kInPlaceMR && nr == kInPlaceNR && (S * C) % mr == 0 && K % nr == 0;
  // dx's A likewise, from dy's channel rows, for panels of mr pixels of one image (whole tiles)
  const bool dx_in_place = mr == kInPlaceMR && nr == kInPlaceNR && T % nr == 0;
  // dx without the taps in the padding where they are a tenth of the taps or more: the chunk's pixels in panels grouped
  // by the taps they read (PaddedPieces), A packed from dy's rows, and only the blocks of nr taps that hold the panel's
  // kernel rows and columns computed (the tile's other taps, left from before, land in xdx's border, which dx drops).
  // Zen 5, one thread, the whole backward's time before / after: AVX-512 384->384 on 3 x 3 1.11-1.28x, 192->192 on
  // 5 x 5 1.04-1.09x, stride-2 256->512 on 4 x 4 1.04x, 80->80 on 9 x 9 and 64->64 5x5 on 16 x 16 0.99-1.03x (there C
  // = 80 straddles the 32-tap blocks; 64 fills them); AVX2 1.05-1.13x on each. Two threads, AVX-512: 0.98-1.06x.
  const bool dx_skip = dx && s.pad > 0 && fraction_inside(s) <= 0.9;
  // dW's tile: the ISA's (mr taps x nr channels), or for K <= 16 on AVX-512 narrow_dw_product's
  // (16 taps x 16 channels: the wide tile would leave half its lanes empty)
  const bool narrow = kNarrowDwTaps > 0 && K <= 16;
  const int tr = narrow ? kNarrowDwTaps : mr;  // taps per panel of dW's A
  const i64 tap_panels = (T + tr - 1) / tr;
  std::vector<PanelRun> tap_runs(size_t(tap_panels) * 16);
  std::vector<int> tap_nruns(static_cast<size_t>(tap_panels));
  for (i64 tp = 0; tp < tap_panels; ++tp) {
    const int m = int(std::min<i64>(tr, T - tp * tr));
    int nruns = 0;
    for (int i = 0; i < m;) {
      const i64 t = tp * tr + i, rq = t / C, c = t % C;
      const int len = int(std::min<i64>(m - i, C - c));
      tap_runs[size_t(tp * 16 + nruns++)] = {(rq / S * s.Wp + rq % S) * C + c - i,
                                             std::uint32_t(((1u << len) - 1) << i)};
      i += len;
    }
    tap_nruns[size_t(tp)] = nruns;
  }
  // dx's B: w [K, T] with its taps in xp's (r, s, c) order, in panels of nr taps (zeros past T):
  // row by row, w's [C, R*S] transposed and cut into the panels (w's layout changed and then
  // packed took two passes over the weights, and a third to zero the room: a fifth of a batch-1
  // 128->256 backward)
  // (rows over the threads, as dw_from_xp_taps)
  const int w_threads = threads_over(double(K) * T, K);
  ScratchFloats wtp(dx ? size_t(Tp) * K : 0), wrow(dx ? size_t(w_threads) * Tp : 0);
  if (dx)
    for_each_over(K, w_threads, [&](i64 k) __attribute__((always_inline)) {
      float* row = wrow.get() + size_t(omp_get_thread_num()) * Tp;
      std::fill(row + T, row + Tp, 0.0f);
      transpose_blocks(row, C, w + k * T, s.R * S, C, s.R * S, C);
      for (i64 j0 = 0; j0 < Tp; j0 += nr) std::memcpy(wtp.get() + j0 * K + k * nr, row + j0, sizeof(float) * nr);
    });
  // dW's product the other way round where that fills its tiles better: mr output channels (A: dy, transposed from
  // its channel rows) by nr taps (B: rows of taps copied from xp), dW [K, Tp]. The usual way round, 48 or 80 output
  // channels leave a quarter or a sixth of the nr = 32 columns of AVX-512's tiles empty; 4 or 7 rows of 12 are whole
  // or nearly. Only on tiles 32 wide (AVX-512), where it was measured: 32->48 on 18 x 18, the whole backward 0.86-0.88x
  // the time; on AVX2's 16 columns 48 and 80 fill the tiles either way.
  auto fill = [](i64 n, i64 tile) { return double(n) / double((n + tile - 1) / tile * tile); };
  const bool channel_rows = dw && !narrow && nr >= 32 && fill(K, mr) * fill(T, nr) > 1.05 * fill(K, nr) * fill(T, tr);
  // dW without the pixels whose taps land in the padding, where a fifth of the taps or more do and A is read in place:
  // the chunk's pixels (dW's depth) grouped by the taps they read, as dx's panels, dy's pixel-major rows copied into
  // that order; each panel of taps then runs over the groups that read one of its taps inside the image. Zen 5, one
  // thread, the backward's time before / after: 384->384 on 3 x 3 1.11-1.20x (AVX-512), 1.21x (AVX2); 192->192 on
  // 5 x 5 1.01-1.10x, 1.08x; stride-2 256->512 on 4 x 4 1.06x, 0.97x. Packed (A not in place), and where fewer taps
  // fall in the padding, it was slower: 22->64 on 5 x 5 0.95-0.97x, 64->64 5x5 on 16 x 16 0.90-0.97x (the groups'
  // shorter products).
  const bool dw_skip = dw && in_place && s.pad > 0 && fraction_inside(s) <= 0.8;
  const PaddedPieces pieces_by_taps(s, dx_skip || dw_skip ? ch.per_chunk : 0, Hu, Wu);
  const i64 Ka = (K + mr - 1) / mr * mr, part = channel_rows ? K * Tp : T * Kp;
  ScratchFloats partial(dw ? size_t(ch.chunks) * part : 0);  // (columns K..Kp, or T..Tp, are never written)
  if (dw && (channel_rows ? Tp > T : Kp > K)) std::fill(partial.get(), partial.get() + ch.chunks * part, 0.0f);
  const i64 chunk_pixels = ch.per_chunk * P, depth = depth_block(std::max<i64>(chunk_pixels, 1));
  // (every buffer a whole number of cache lines, so that each starts on one: see ScratchFloats)
  const size_t xp_floats = lines(size_t(ch.per_chunk) * image),
               ap_floats = lines(size_t(std::max(depth, K)) * std::max(mr, tr));
  const size_t tile_floats = dx ? lines(size_t(mr) * Tp) : 0, lk_floats = lines(size_t(chunk_pixels) * Kp);
  const size_t per_thread = xp_floats * (dx ? 2 : 1) + ap_floats + tile_floats + lk_floats * (dw_skip ? 2 : 1) +
                            lines(size_t(chunk_pixels) * K);
  const size_t offsets_per_thread = size_t(chunk_pixels * (dw_skip ? 2 : 1) + K);
  ScratchFloats scratch(size_t(nt) * per_thread);
  std::unique_ptr<i64[]> offset_scratch(new i64[size_t(nt) * offsets_per_thread]);
  // A single chunk wanting both gradients (a batch of one image): dW on one thread while dx is made
  // on another, with a packed A of its own (each the same as made in turn)
  const bool side_by_side = dx && dw && ch.chunks == 1 && threads_over(2.0 * N * K * P * T, 2) > 1;
  ScratchFloats dx_ap(side_by_side ? ap_floats : 0);
  // A single chunk wanting dW alone (Winograd's dx comes after it, or the whole batch's dW after dx): its panels of
  // taps over the threads, each with a packed A of its own (each panel's rows of dW^T are one thread's)
  const int dw_inner = dw && !dx && ch.chunks == 1 && double(N) * K * P * T >= kSplitChunkWork
                           ? threads_over(double(N) * K * P * T, tap_panels)
                           : 1;
  ScratchFloats dw_aps(dw_inner > 1 ? size_t(dw_inner) * ap_floats : 0);
  // channel_rows: A, dy's channels for a depth block of pixels, [Ka/mr][depth][mr], per thread; B, [depth][nr] taps,
  // per thread (or thread of dw_inner)
  const int dw_threads = std::max(nt, std::max(dw_inner, 2));
  ScratchFloats rows_a(channel_rows ? size_t(dw_threads) * Ka * depth : 0),
      rows_b(channel_rows ? size_t(dw_threads) * depth * nr : 0);
  for_each_chunk(ch.chunks, nt, [&](i64 chunk) __attribute__((always_inline)) {
    const i64 n0 = chunk * ch.per_chunk, n1 = std::min(N, n0 + ch.per_chunk), L = (n1 - n0) * P;
    float* xp = scratch.get() + size_t(omp_get_thread_num()) * per_thread;                    // [images][Hp][Wp][C]
    float* xdx = xp + xp_floats;                                                              // the same, for dx
    float* ap = xdx + (dx ? xp_floats : 0);                                                   // packed A
    float* tile = ap + ap_floats;                                                             // drows [mr, Tp]
    float* lk = tile + tile_floats;                                                           // dy pixel-major
    float* kl = lk + lk_floats;                                                               // dy channel-major
    float* lk_by_taps = kl + lines(size_t(chunk_pixels) * K);                                 // dw_skip's order
    i64* offsets = offset_scratch.get() + size_t(omp_get_thread_num()) * offsets_per_thread;  // pixel l's in xp
    i64* channel_offsets = offsets + chunk_pixels;                                            // channel k's in dy
    i64* offsets_by_taps = channel_offsets + K;                                               // dw_skip's order
    if (dw)  // (dx alone needs only the layout, not x; the whole batch's images over the threads)
      for_each_over(n1 - n0, one_chunk ? dw_inner : 1, [&](i64 n) __attribute__((always_inline)) {
        to_channels_last(xp + n * image, x + (n0 + n) * s.C * s.H * s.W, s);
      });
    // (dy pixel-major is dW's B the usual way round: not made for channel_rows, nor for dx alone)
    const DyPanels d = dy_of.chunk(dy_of.context, n0, n1, kl, channel_rows || !dw ? nullptr : lk);
    for (i64 n = 0, l = 0; n < n1 - n0; ++n)  // (pixel (oh, ow)'s patch starts at row oh*stride, column ow*stride)
      for (i64 oh = 0; oh < Hu; ++oh)
        for (i64 ow = 0; ow < Wu; ++ow) offsets[l++] = n * image + (oh * s.Wp + ow) * s.stride * C;
    // dW [K, Tp] (taps in xp's (r, q, c) order): channel_rows' product
    auto dw_by_channel_rows = [&]() {
      float* out = partial.get() + chunk * part;
      float* a_rows = rows_a.get() + size_t(omp_get_thread_num()) * Ka * depth;
      for (i64 l0 = 0; l0 < L; l0 += depth) {
        const i64 kb = std::min(depth, L - l0);
        for (i64 c0 = 0; c0 < K; c0 += mr)  // dy's channels c0.. for pixels l0.., image by image: [kb][mr]
          for (i64 l = l0; l < l0 + kb;) {
            const i64 n = l / P, p = l % P, count = std::min(l0 + kb - l, P - p);
            transpose_blocks(a_rows + c0 * kb + (l - l0) * mr, mr,
                             d.by_channel + n * d.image_stride + c0 * d.channel_stride + p, d.channel_stride,
                             std::min<i64>(mr, K - c0), count, mr);
            l += count;
          }
        for_each_over(Tp / nr, dw_inner, [&](i64 tp) __attribute__((always_inline)) {
          float* b_rows = rows_b.get() + size_t(omp_get_thread_num()) * depth * nr;
          const i64 t0 = tp * nr, taps = std::min<i64>(nr, T - t0), r = t0 / (S * C), within = t0 % (S * C);
          // (the panel's taps in one kernel row: a fixed-size copy a pixel)
          if (nr == kInPlaceNR && taps == nr && within + nr <= S * C) {
            const float* from = xp + r * s.Wp * C + within;
            for (i64 l = 0; l < kb; ++l)
              __builtin_memcpy(b_rows + l * nr, from + offsets[l0 + l], sizeof(float) * kInPlaceNR);
          } else {
            for (i64 l = 0; l < kb; ++l) {
              float* to = b_rows + l * nr;
              for (i64 j = 0; j < taps;) {
                const i64 t = t0 + j, at = t % (S * C), len = std::min(taps - j, S * C - at);
                std::memcpy(to + j, xp + offsets[l0 + l] + t / (S * C) * s.Wp * C + at, sizeof(float) * size_t(len));
                j += len;
              }
              std::fill(to + taps, to + nr, 0.0f);
            }
          }
          for (i64 c0 = 0; c0 < K; c0 += mr)
            mk.run(kb, a_rows + c0 * kb, b_rows, out + c0 * Tp + t0, Tp, std::min<i64>(mr, K - c0), taps, l0 > 0);
        });
      }
    };
    // dw_skip's: the pixels in pieces_by_taps' order (their offsets in xp, their rows of dy), in groups of equal taps
    auto dw_without_padding = [&](float* out) {
      struct Group {
        i64 r0, r1, q0, q1, start, end;
      };
      std::vector<Group> groups;
      i64 l = 0;
      for (const auto& piece : pieces_by_taps.pieces) {
        if (piece.image >= n1 - n0) continue;  // (the last chunk's fewer images)
        if (groups.empty() || std::tie(groups.back().r0, groups.back().r1, groups.back().q0, groups.back().q1) !=
                                  std::tie(piece.r0, piece.r1, piece.q0, piece.q1))
          groups.push_back({piece.r0, piece.r1, piece.q0, piece.q1, l, l});
        const i64 from = piece.image * P + piece.oh * Wu + piece.ow;
        for (i64 i = 0; i < piece.len; ++i, ++l) {
          offsets_by_taps[l] = offsets[from + i];
          for (i64 j0 = 0; j0 < Kp; j0 += nr)
            std::memcpy(lk_by_taps + j0 * L + l * nr, d.by_pixel + j0 * L + (from + i) * nr, sizeof(float) * nr);
        }
        groups.back().end = l;
      }
      std::fill(out, out + T * Kp, 0.0f);  // (every product below adds to it)
      for (i64 l0 = 0; l0 < L; l0 += depth) {
        const i64 kb = std::min(depth, L - l0);
        for_each_over(tap_panels, dw_inner, [&](i64 tp) __attribute__((always_inline)) {
          // (the panel's mr taps: kernel row r, columns q_first..q_last, in place in the pixel's row r)
          const i64 t0 = tp * mr, r = t0 / (S * C), q_first = t0 / C % S, q_last = (t0 + mr - 1) / C % S;
          const float* a = xp + r * s.Wp * C + t0 % (S * C);
          for (const Group& g : groups) {
            const i64 from = std::max(g.start, l0), len = std::min(g.end, l0 + kb) - from;
            if (len > 0 && g.r0 <= r && r < g.r1 && g.q0 <= q_last && q_first < g.q1)  // (a tap inside the image)
              for (i64 j0 = 0; j0 < K; j0 += nr)
                microkernel_in_place(len, a, offsets_by_taps + from, lk_by_taps + j0 * L + from * nr,
                                     out + t0 * Kp + j0, Kp, true);
          }
        });
      }
    };
    auto dw_of_chunk = [&]() {
      if (channel_rows) return dw_by_channel_rows();
      float* out = partial.get() + chunk * T * Kp;  // dW^T [T, Kp]
      if (dw_skip) return dw_without_padding(out);
      for (i64 l0 = 0; l0 < L; l0 += depth) {
        const i64 kb = std::min(depth, L - l0);
        for_each_over(tap_panels, dw_inner, [&](i64 tp) __attribute__((always_inline)) {
          if (in_place) {  // taps tp*mr.. of kernel row r = tap / (S*C), at offset tap % (S*C) in the pixel's row r
            const float* a = xp + (tp * mr) / (S * C) * s.Wp * C + (tp * mr) % (S * C);
            for (i64 j0 = 0; j0 < K; j0 += nr)
              microkernel_in_place(kb, a, offsets + l0, d.by_pixel + j0 * L + l0 * nr, out + tp * mr * Kp + j0, Kp,
                                   l0 > 0);
            return;
          }
          float* a_pack = dw_inner > 1 ? dw_aps.get() + size_t(omp_get_thread_num()) * ap_floats : ap;
          pack_patch_panel(a_pack, xp, &tap_runs[size_t(tp * 16)], tap_nruns[size_t(tp)], offsets + l0, kb, tr);
          if (narrow) {  // B: dy's first panel of nr channels, of which K <= 16 are used
            narrow_dw_product(kb, a_pack, d.by_pixel + l0 * nr, nr, out + tp * tr * Kp, Kp,
                              std::min<i64>(tr, T - tp * tr), K, l0 > 0);
            return;
          }
          for (i64 j0 = 0; j0 < K; j0 += nr)
            mk.run(kb, a_pack, d.by_pixel + j0 * L + l0 * nr, out + tp * mr * Kp + j0, Kp,
                   std::min<i64>(mr, T - tp * mr), std::min<i64>(nr, K - j0), l0 > 0);
        });
      }
    };
    auto dx_of_chunk = [&](float* a_pack) {
      std::fill(xdx, xdx + (n1 - n0) * image, 0.0f);
      for (i64 k = 0; k < K; ++k) channel_offsets[k] = k * d.channel_stride;
      if (dx_skip) {
        std::fill(tile, tile + mr * Tp, 0.0f);  // (the taps no panel computes: zeros, then left from before)
        const auto& pieces = pieces_by_taps.pieces;
        for (size_t next = 0, within = 0;;) {  // (the piece the panel starts in, and how far in)
          PanelRun runs[16];
          i64 pixel_offsets[16], r0 = s.R, r1 = 0, q0 = S, q1 = 0;
          int m = 0, nruns = 0;
          while (m < mr && next < pieces.size()) {
            const auto& piece = pieces[next];
            if (piece.image >= n1 - n0) {  // (the last chunk's fewer images)
              ++next;
              continue;
            }
            const int len = int(std::min<i64>(mr - m, piece.len - i64(within)));
            const i64 p = piece.oh * Wu + piece.ow + i64(within);  // (its first pixel in the image)
            runs[nruns++] = {piece.image * d.image_stride + p - m, std::uint32_t(((1u << len) - 1) << m)};
            for (int i = 0; i < len; ++i) pixel_offsets[m + i] = offsets[piece.image * P + p + i];
            if (piece.r0 < piece.r1 && piece.q0 < piece.q1)
              r0 = std::min(r0, piece.r0), r1 = std::max(r1, piece.r1), q0 = std::min(q0, piece.q0),
              q1 = std::max(q1, piece.q1);
            m += len, within += size_t(len);
            if (i64(within) == piece.len) ++next, within = 0;
          }
          if (m == 0) break;
          if (r0 >= r1) continue;  // (pixels that read only padding give dx nothing)
          pack_patch_panel(a_pack, d.by_channel, runs, nruns, channel_offsets, K, mr);
          for (i64 r = r0, j0 = 0; r < r1; ++r)  // (the blocks of nr taps that hold kernel row r's columns q0..q1)
            for (j0 = std::max(j0, (r * S + q0) * C / nr * nr); j0 < (r * S + q1) * C; j0 += nr)
              mk.run(K, a_pack, wtp.get() + j0 * K, tile + j0, Tp, m, std::min<i64>(nr, T - j0), 0);
          add_patch_rows(xdx, tile, Tp, pixel_offsets, m, s);
        }
        for (i64 n = n0; n < n1; ++n) from_channels_last(dx + n * s.C * s.H * s.W, xdx + (n - n0) * image, s);
        return;
      }
      for (i64 l0 = 0; l0 < L; l0 += mr) {
        const int m = int(std::min<i64>(mr, L - l0));
        PanelRun runs[16];
        int nruns = 0;
        for (int i = 0; i < m;) {  // lanes i.. of one image
          const i64 l = l0 + i, n = l / P, p = l % P;
          const int len = int(std::min<i64>(m - i, P - p));
          runs[nruns++] = {n * d.image_stride + p - i, std::uint32_t(((1u << len) - 1) << i)};
          i += len;
        }
        if (dx_in_place && m == mr && nruns == 1) {  // mr pixels of one image: A read in place from dy's rows
          for (i64 j0 = 0; j0 < T; j0 += nr)
            microkernel_in_place(K, d.by_channel + runs[0].offset, channel_offsets, wtp.get() + j0 * K, tile + j0, Tp,
                                 false);
        } else {
          pack_patch_panel(a_pack, d.by_channel, runs, nruns, channel_offsets, K, mr);
          for (i64 j0 = 0; j0 < T; j0 += nr)
            mk.run(K, a_pack, wtp.get() + j0 * K, tile + j0, Tp, m, std::min<i64>(nr, T - j0), 0);
        }
        add_patch_rows(xdx, tile, Tp, offsets + l0, m, s);
      }
      for (i64 n = n0; n < n1; ++n) from_channels_last(dx + n * s.C * s.H * s.W, xdx + (n - n0) * image, s);
    };
    if (side_by_side) {
#pragma omp parallel num_threads(2)
      {
        if (omp_get_thread_num() == 0) dw_of_chunk();
        if (omp_get_thread_num() == 1 || omp_get_num_threads() == 1) dx_of_chunk(dx_ap.get());
      }
      return;
    }
    if (dw) dw_of_chunk();
    if (dx) dx_of_chunk(ap);
  });
  if (!dw) return;
  ScratchFloats total(ch.chunks > 1 ? size_t(part) : 0);
  if (ch.chunks > 1) sum_parts(total.get(), partial.get(), ch.chunks, part);  // the chunks' products, in chunk order
  const float* sum = ch.chunks > 1 ? total.get() : partial.get();
  if (!channel_rows) return dw_from_xp_taps(dw, sum, Kp, s);
  for_each_over(K, w_threads, [&](i64 k) __attribute__((always_inline)) {  // (row k's [R*S, C] into w's [C, R*S])
    transpose_blocks(dw + k * T, s.R * S, sum + k * Tp, C, s.R * S, C, s.R * S);
  });
}

}  // namespace

// The ISA table's entries (isa.hpp)
void transpose(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out) {
  transpose_blocks(dst, ldd, src, lds, rows, cols, rows_out);
}

void panels_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                    i64 N, i64 pool_k) {
  conv2d_forward_panels(y, x, w, b, s, N, argmax, pool_k);
}

void panels_backward(float* dx, float* dw, const float* x, const float* w, DyPanelsSource dy, const ConvShape& s, i64 N,
                     i64 Hu, i64 Wu) {
  conv2d_backward_panels(dx, dw, x, w, dy, s, N, Hu, Wu);
}

void panels_backward_plain(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                           const ConvShape& s, i64 N) {
  // the bias gradient's lanes, taken as dy is transposed (every lane written); for rows of 16 pixels or fewer, db from
  // dy itself after it (bias_from_dy: the same sums, without writing and reading back 16 lanes a row, 64 bytes against
  // a 1x1 layer's 36 on 3 x 3 images: a quarter of a 224->672 layer's dW there, AVX-512, batch 128)
  const bool lanes_wanted = db && !bias_from_dy(s.P());
  ScratchFloats lanes(lanes_wanted ? size_t(N) * s.K * 16 : 0);
  const GatherDyPanels gather{dy, s.K, s.P(), gemm_microkernel.nr, lanes_wanted ? lanes.get() : nullptr};
  conv2d_backward_panels(dx, dw, x, w, DyPanelsSource{&GatherDyPanels::chunk, &gather}, s, N, s.Ho, s.Wo);
  if (lanes_wanted)
    sum_bias_lanes(db, lanes.get(), N, s.K);
  else if (db)
    bias_grad(db, dy, N, s.K, s.P());
}
