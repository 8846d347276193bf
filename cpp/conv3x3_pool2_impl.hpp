// conv2d (one input channel, 3x3) + ReLU + 2x2 max-pool in registers: the batch, image by image
// over the threads, for the files that give the image kernels (conv3x3_pool2_avx512.cpp: AVX-512
// intrinsics; conv3x3_pool2.cpp: portable vectors). Included inside namespace cnnfast::<isa> and
// its target pragmas after they define:
//   Windows(s)            the windows' layout: Q (their number), scratch_floats() (per image)
//   forward_windows<kArgmax>(y, argmax, x, w, b, s, win, scratch) one image's y, and its argmax with
//                         kArgmax (inference asks for y alone: the window's index is then not made)
//   image_backward(dw_k, lanes, x, dy, argmax, s, win, scratch)   one image's dw [K, 9] and bias
//                         lanes [K, 16]; false if an argmax lies outside its window
// (No include guard: each ISA file includes it once, in its own namespace.)

namespace {
// one image's y, and its argmax where asked for (argmax may be null)
void image_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                   const Windows& win, float* scratch) {
  if (argmax) return forward_windows<true>(y, argmax, x, w, b, s, win, scratch);
  forward_windows<false>(y, argmax, x, w, b, s, win, scratch);
}
}  // namespace

// The ISA table's entries (isa.hpp)
void conv3x3_pool2_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N) {
  const Windows win(s);
  const i64 pooled = s.K * win.Q;
  if (N == 1) {  // one image: its output channels over the threads, each with its own planes
    const int nt = threads_over(double(s.K) * s.P() * 9, s.K);
    ScratchFloats scratch(size_t(nt) * win.scratch_floats());
#pragma omp parallel num_threads(nt)
    {
      const int me = omp_get_thread_num(), team = omp_get_num_threads();  // (the team OpenMP gave)
      const i64 k0 = s.K * me / team, k1 = s.K * (me + 1) / team;
      const ConvShape part(s.C, s.H, s.W, k1 - k0, s.R, s.S, s.pad, s.stride);
      image_forward(y + k0 * win.Q, argmax ? argmax + k0 * win.Q : nullptr, x, w + k0 * 9, b + k0, part, win,
                    scratch.get() + size_t(me) * win.scratch_floats());
    }
    return;
  }
  const int nt = threads_over(double(N) * s.K * s.P() * 9, N);
  ScratchFloats scratch(size_t(nt) * win.scratch_floats());  // (every value written before it is read)
  // (images handed out 4 at a time to whichever thread is free, as conv2d_loops_impl.hpp's chunks
  // are, here and in the backward: on the Zen 4 EPYC's two AVX2 threads, batch 128, medians of 100
  // calls alternating with fixed halves, the forward took 0.64 -> 0.59, 0.97 -> 0.86 and 0.71 ->
  // 0.68 ms in three runs, the backward 0.64 -> 0.60, 0.94 -> 0.97 and 0.71 -> 0.63)
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
  for (i64 n = 0; n < N; ++n)
    image_forward(y + n * pooled, argmax ? argmax + n * pooled : nullptr, x + n * s.H * s.W, w, b, s, win,
                  scratch.get() + size_t(omp_get_thread_num()) * win.scratch_floats());
}

bool conv3x3_pool2_backward(float* dw, float* db, const float* x, const float* dy, const std::int32_t* argmax,
                            const ConvShape& s, i64 N) {
  const Windows win(s);
  const i64 K = s.K, pooled = K * win.Q;
  const int nt = threads_over(double(N) * K * s.P() * 9, N);
  ScratchFloats scratch(size_t(nt) * win.scratch_floats()), partial(size_t(N) * K * 9), lanes(size_t(N) * K * 16);
  std::atomic<bool> stray{false};
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
  for (i64 n = 0; n < N; ++n)
    if (!image_backward(partial.get() + n * K * 9, lanes.get() + n * K * 16, x + n * s.H * s.W, dy + n * pooled,
                        argmax + n * pooled, s, win,
                        scratch.get() + size_t(omp_get_thread_num()) * win.scratch_floats()))
      stray.store(true, std::memory_order_relaxed);
  if (stray.load()) return false;
  sum_parts(dw, partial.get(), N, K * 9);  // per image, added in image order
  sum_bias_lanes(db, lanes.get(), N, K);
  return true;
}
