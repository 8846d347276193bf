// The loops conv2d's per-ISA drivers split over the threads, and their copy of an image into a
// zero-bordered one. Included inside each per-ISA file's
// namespace and target pragmas (conv2d_panels_impl.hpp, conv2d_winograd_kernels.cpp): defined
// outside them, these templates were compiled without the ISA's target, so the ISA's lambdas could
// not be inlined into them (GCC: "target specific option mismatch"), and the default model's
// second layer ran 4-6% slower through the call. (No include guard: each file includes it once.)

// A single chunk's work (multiply-adds) from which the panels' forward splits it over the threads:
// a thread woken has to pay for itself. 1.5M with 32-byte multiply-adds or wider: on an Intel Xeon's
// AVX2, 1x1 64->128 on 16x16 at one image, 2.1M, 0.048 -> 0.037 ms on two threads, mnist conv2 0.051
// -> 0.034; on a Zen 4 EPYC the default model's conv2 with ReLU and pooling at one image (1.8M: the
// 100 pixels its windows read) 43 -> 30 us on AVX-512 (half rate there), 46 -> 31-37 on AVX2, and its
// single-image inference 57 -> 44 us; on a Zen 5 EPYC with AVX-512 at full rate the same layer 23 ->
// 17 us, and single-image inference beside ONNX Runtime 0.76-1.01x -> 1.01-1.20x its speed. (With
// full-rate AVX-512 this waited for kSplitChunkWork, 4M, after an Intel Xeon's conv2 at one image,
// 2.2M, took 0.029 -> 0.032 ms split: the two CPUs disagree, and the Zen 5 is the one measured last.)
// Narrower vectors: less again, in proportion. Winograd keeps kSplitChunkWork: its 16 products split
// at 2.4M on AVX2 went either way (0.048 -> 0.036 and 0.040 -> 0.052 ms).
inline double split_work() { return 1.5e6 * std::min(CNNFAST_VEC_BYTES, 32) / 32; }

// body(i) for i in [0, count) over `threads` threads, each taking a fixed share (a single chunk's
// pieces, and the pointwise path's panels; as for_each_chunk_shared's loops, whose fixed shares let
// Winograd's heavy layers run their chunks one after another, each thread keeping the same products'
// weights in its cache: handed out dynamically, 64->128 on 8 x 8 at batch 32 took 1.08x as long on two
// AVX-512 threads, in one run); with one, a plain loop (inside a chunk of a parallel loop even a
// one-thread region would make a nested team)
template <class Body>
void for_each_over(i64 count, int threads, Body&& body) {
  if (threads <= 1) {
    for (i64 i = 0; i < count; ++i) body(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 i = 0; i < count; ++i) body(i);
}

// body(chunk) for every chunk, the chunks over nt threads; a single chunk runs outside any parallel
// region, so that the parallel loops inside it get the threads (a nested region made its team anew
// on every call: a batch-1 1x1 256->64 layer went from 0.022 to 0.037 ms on two threads). The chunks
// go one at a time to whichever thread is free (schedule(dynamic)), so that threads running at
// different speeds (an efficiency core beside a performance one) finish together, where fixed
// halves ran at the slower one's pace. Each chunk's results are its own (per-thread scratch is only
// scratch), so the bits do not depend on which thread takes which. (On the Zen 4 EPYC's two
// threads, conv2's block at batch 128 took the same time either way; a thread descheduled for a
// while still holds up every parallel region.)
template <class Body>
void for_each_chunk(i64 chunks, int nt, Body&& body) {
  (void)nt;  // (unused without OpenMP)
  if (chunks == 1) return body(i64(0));
  if (nt <= 1) {  // (one thread: no region either, for the parallel loops inside the chunks)
    for (i64 chunk = 0; chunk < chunks; ++chunk) body(chunk);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic)
  for (i64 chunk = 0; chunk < chunks; ++chunk) body(chunk);
}

// A chunk's loops, over(count, f): f(i) for i in [0, count). SharedLoops, inside a parallel region: a worksharing loop
// among its threads (a fixed share each, as for_each_over) and a barrier after it; over.nowait(count, f) without the
// barrier, for a chunk's last loop, where what comes next up to its own barrier neither writes what this loop reads
// nor touches what it writes. Every thread of the region must make the same calls in the same order. PlainLoops: one
// thread's plain loops.
struct SharedLoops {
  template <class F>
  __attribute__((always_inline)) void operator()(i64 count, F&& f) const {
#pragma omp for schedule(static)
    for (i64 i = 0; i < count; ++i) f(i);
  }
  template <class F>
  __attribute__((always_inline)) void nowait(i64 count, F&& f) const {
#pragma omp for schedule(static) nowait
    for (i64 i = 0; i < count; ++i) f(i);
  }
};
struct PlainLoops {
  template <class F>
  __attribute__((always_inline)) void operator()(i64 count, F&& f) const {
    for (i64 i = 0; i < count; ++i) f(i);
  }
  template <class F>
  __attribute__((always_inline)) void nowait(i64 count, F&& f) const {
    (*this)(count, f);  // (one thread: no barrier to leave out)
  }
};

// body(chunk, over) for every chunk: with inner > 1, the chunks one after another inside one region of `inner`
// threads, which share each of a chunk's loops (over: SharedLoops); otherwise the chunks over nt threads
// (for_each_chunk), each chunk's loops on its thread (PlainLoops). One region for the whole call, where a region per
// loop woke the other thread three times a chunk: under OMP_WAIT_POLICY=passive, where each wake and each barrier is a
// system call, Winograd's 112->224 on 5 x 5 at batch 32 took 2.52 ms on two threads (AVX-512), no faster than one
// thread, and takes 1.60 now (76 such calls a forward then, 32 now).
template <class Body>
void for_each_chunk_shared(i64 chunks, int nt, int inner, Body&& body) {
  if (inner > 1) {
#pragma omp parallel num_threads(inner)
    for (i64 chunk = 0; chunk < chunks; ++chunk) body(chunk, SharedLoops{});
    return;
  }
  for_each_chunk(chunks, nt, [&](i64 chunk) __attribute__((always_inline)) { body(chunk, PlainLoops{}); });
}

// dst[0:n] = src[0:n] for an image's rows (8-64 floats: memcpy's call and dispatch were a tenth of a
// strided 32->64 layer's forward on 16 x 16), in whole vectors of the ISA, then one masked one
// (vec_impl.hpp's, included before this file; a quarter at a time and then floats, the pointwise
// forward's staged runs of 9 pixels took 1.07-1.16x the time)
inline void copy_row(float* dst, const float* src, i64 n) {
  constexpr i64 VL = CNNFAST_VEC_BYTES / 4;
  i64 i = 0;
  for (; i + VL <= n; i += VL) store(dst + i, load(src + i));
  if (i < n) store_first(dst + i, load_first(src + i, n - i), n - i);
}

// xp: [C][Hp][Wp] <- x_n: [C][H][W], at (pad, pad) in each plane; the border is left as it is (the
// caller zeroes each thread's copy once: every image writes the same places)
inline void copy_into_border(float* xp, const float* x, i64 C, const ConvShape& s) {
  const i64 plane = s.Hp * s.Wp;
  for (i64 c = 0; c < C; ++c)
    for (i64 h = 0; h < s.H; ++h) copy_row(xp + c * plane + (h + s.pad) * s.Wp + s.pad, x + (c * s.H + h) * s.W, s.W);
}
