// The loops conv2d's per-ISA drivers split over the threads. Included inside each per-ISA file's
// namespace and target pragmas (conv2d_panels_impl.hpp, conv2d_winograd_kernels.cpp): defined
// outside them, these templates were compiled without the ISA's target, so the ISA's lambdas could
// not be inlined into them (GCC: "target specific option mismatch"), and the default model's
// second layer ran 4-6% slower through the call. (No include guard: each file includes it once.)

// body(i) for i in [0, count) over `threads` threads; with one, a plain loop (inside a chunk of a
// parallel loop even a one-thread region would make a nested team)
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
// on every call: a batch-1 1x1 256->64 layer went from 0.022 to 0.037 ms on two threads)
template <class Body>
void for_each_chunk(i64 chunks, int nt, Body&& body) {
  (void)nt;  // (unused without OpenMP)
  if (chunks == 1) return body(i64(0));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (i64 chunk = 0; chunk < chunks; ++chunk) body(chunk);
}
