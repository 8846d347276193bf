// bench_kernels: every cnnfast kernel at each layer shape of the default MNIST model, timed,
// and compared with the machine's own peak, which it measures first.
//
// Build (not part of the wheel; the top-level CMake needs Python and pybind11 to configure):
//
//   cmake -S . -B /tmp/bench-build -DCNNFAST_BUILD_BENCH=ON -DCMAKE_BUILD_TYPE=Release  (same line:)
//         -Dpybind11_DIR=$(python3 -c 'import pybind11;print(pybind11.get_cmake_dir())')
//   cmake --build /tmp/bench-build --target bench_kernels -j2
//
// Run:
//
//   /tmp/bench-build/bench/bench_kernels                 # batch 128, all threads, best ISA
//   /tmp/bench-build/bench/bench_kernels --threads 2 --json kernels.json
//   /tmp/bench-build/bench/bench_kernels --isa avx2 --threads 1 --repeat 50
//   /tmp/bench-build/bench/bench_kernels --tiny          # CI: proves it builds and runs (< 1 s)
//
// What it does, in order:
// 1. Peak: an FMA-throughput loop (12 independent vector accumulators, enough to keep two FMA
//    ports busy through a 4-cycle latency), compiled once per instruction set with
//    __attribute__((target)) and run for each one the CPU supports, on 1 thread and on N
//    threads (one copy per OpenMP thread). 2 FLOP per FMA lane (baseline: a multiply and an
//    add). Rows are compared with the peak of the ISA in use (--isa), else the widest's. Best of 3 runs, measured at
//    the start and again at the end; a warning is printed when the two disagree or N threads do not reach ~N times one
//    thread (another process holds a core: the kernel timings are then unreliable).
// 2. Bandwidth: a STREAM-style triad a = b + s*c, 1 and N threads, counting 12 bytes per
//    element as STREAM does, over arrays the size of the model's largest activation (relu1's
//    input: 11 MB at batch 128), so it is the bandwidth of wherever that data lives (L3 here,
//    not DRAM). The ceiling for memory-bound rows; smaller layers may beat it (L2).
// 3. Kernels: inputs allocated once (64-byte aligned) and filled with uniform [-1, 1) noise,
//    each kernel warmed up, then `repeat` samples; a sample calls the kernel back to back
//    enough times to last >= 0.2 ms (so microsecond kernels are not timer noise) and records
//    the time per call. Reported: median and min per call, GFLOP/s and GB/s from the median,
//    and % of the measured peak (FLOP) and bandwidth (bytes) at the same thread count.
//    FLOP counts are nominal: 2 per multiply-add for conv/linear/GEMM (bias terms not
//    counted), one per element for relu/dropout, one compare per non-first window element for
//    max-pool (one more per window for the fused ReLU), 4 per logit for softmax cross-entropy, 12 per parameter for
//    Adam. Bytes are the compulsory traffic: every input read once, every output written once.
// The "training step" line sums the median times of the kernels one training step calls
// (each Conv2d-ReLU-MaxPool2d block as one conv2d_relu_max_pool2d, conv1's backward without
// dx, conv2's with it) and turns it into images/s: the ceiling for
// `python bench/bench_train.py` with Python overhead removed.
#include "gemm.hpp"
#include "kernels.hpp"
#include "parallel.hpp"

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BENCH_X86 1
#include <immintrin.h>
#endif

namespace {

using cnnfast::i64;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// ---------------------------------------------------------------------------- options

struct Options {
  std::string json;           // --json FILE
  int threads = 0;            // --threads N (0: OpenMP's default)
  i64 batch = 128;            // --batch N
  int repeat = 20;            // --repeat N
  bool tiny = false;          // --tiny
  std::string isa;            // --isa NAME
  double min_sample = 2e-4;   // seconds: a sample repeats a kernel until it lasts this long
  double peak_seconds = 0.1;  // per peak measurement
  double bw_seconds = 0.2;    // triad: repeat for this long, keep the best
  i64 gemm_size = 1024;
};

void usage(FILE* out) {
  std::fprintf(out,
               "usage: bench_kernels [--json FILE] [--threads N] [--batch N] [--repeat N] [--isa NAME] [--tiny]\n"
               "  --json FILE   also write the results (and machine info, peak, ISA) as JSON to FILE\n"
               "  --threads N   OpenMP threads for the kernels (default: OMP_NUM_THREADS or all cores)\n"
               "  --batch N     batch size of the layer shapes (default 128)\n"
               "  --repeat N    timed samples per kernel; the median is reported (default 20)\n"
               "  --isa NAME    force every kernel to one instruction set: baseline, avx2, avx512 (x86-64) or neon "
               "(AArch64) (default: $CNNFAST_ISA if set, as for the package; else the best supported)\n"
               "  --tiny        batch 2, 3 samples, short peak loop, small GEMM: a smoke test for CI\n");
}

bool parse_int(const char* s, long long lo, long long* out) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  if (errno || end == s || *end != '\0' || v < lo) return false;
  *out = v;
  return true;
}

bool parse_args(int argc, char** argv, Options* o) {
  bool batch_given = false, repeat_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_kernels: %s needs a value\n", name);
        return nullptr;
      }
      return argv[++i];
    };
    long long v = 0;
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(0);
    } else if (a == "--tiny") {
      o->tiny = true;
    } else if (a == "--json") {
      const char* s = value("--json");
      if (!s) return false;
      o->json = s;
    } else if (a == "--isa") {
      const char* s = value("--isa");
      if (!s) return false;
      o->isa = s;
    } else if (a == "--threads" || a == "--batch" || a == "--repeat") {
      const char* s = value(a.c_str());
      if (!s) return false;
      if (!parse_int(s, 1, &v) || v > (a == "--batch" ? 1 << 20 : 1 << 16)) {
        std::fprintf(stderr, "bench_kernels: %s must be a positive integer, got '%s'\n", a.c_str(), s);
        return false;
      }
      if (a == "--threads") o->threads = int(v);
      if (a == "--batch") o->batch = v, batch_given = true;
      if (a == "--repeat") o->repeat = int(v), repeat_given = true;
    } else {
      std::fprintf(stderr, "bench_kernels: unknown argument '%s'\n", a.c_str());
      return false;
    }
  }
  if (o->tiny) {
    if (!batch_given) o->batch = 2;
    if (!repeat_given) o->repeat = 3;
    o->min_sample = 0.0;
    o->peak_seconds = 0.01;
    o->bw_seconds = 0.01;
    o->gemm_size = 64;
  }
  return true;
}

// ---------------------------------------------------------------------------- buffers

// A 64-byte aligned array, like NumPy's large allocations (no first-touch surprises: filled
// by one thread, as NumPy does).
template <typename T>
struct Buffer {
  std::unique_ptr<T, decltype(&std::free)> p{nullptr, &std::free};
  i64 n = 0;
  explicit Buffer(i64 count) : n(count) {
    const size_t bytes = ((size_t(std::max<i64>(count, 1)) * sizeof(T) + 63) / 64) * 64;
    p.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!p) throw std::bad_alloc();
    std::memset(p.get(), 0, bytes);
  }
  T* data() { return p.get(); }
};

std::mt19937_64 g_rng(12345);

Buffer<float> random_floats(i64 n) {
  Buffer<float> b(n);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (i64 i = 0; i < n; ++i) b.data()[i] = u(g_rng);
  return b;
}

// ---------------------------------------------------------------------------- peak

constexpr int kAcc = 12;  // independent accumulators: >= 2 ports x 4-cycle FMA latency

// Each returns the sum of its accumulators so the loop cannot be removed. acc = acc*a + b
// with a just below 1 converges to b/(1-a): no overflow, no denormals.
float peak_loop_baseline(long iters, float seed) {
  typedef float v4 __attribute__((vector_size(16)));
  v4 acc[kAcc];
  const v4 a = {0.999999f, 0.999999f, 0.999999f, 0.999999f};
  const v4 b = a * 1e-6f;
  for (int i = 0; i < kAcc; ++i) acc[i] = (v4){seed, seed, seed, seed} + float(i);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) acc[i] = acc[i] * a + b;
  }
  v4 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s += acc[i];
  return s[0] + s[1] + s[2] + s[3];
}

#ifdef BENCH_X86
__attribute__((target("avx2,fma"))) float peak_loop_avx2(long iters, float seed) {
  __m256 acc[kAcc];
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_ps(seed + float(i));
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  float r = 0;
  for (float x : out) r += x;
  return r;
}

__attribute__((target("avx512f"))) float peak_loop_avx512(long iters, float seed) {
  __m512 acc[kAcc];
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(seed + float(i));
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  float r = 0;
  for (float x : out) r += x;
  return r;
}
#endif

struct PeakLoop {
  const char* isa;   // named as the GEMM micro-kernels are
  const char* what;  // the instructions it times
  int lanes;         // floats per vector
  float (*run)(long, float);
};

std::vector<PeakLoop> supported_peak_loops() {
  std::vector<PeakLoop> loops;
#ifdef BENCH_X86
  loops.push_back({"baseline", "SSE mulps+addps", 4, peak_loop_baseline});
  if (cnnfast::cpu_supports_isa("avx2")) loops.push_back({"avx2", "AVX2 vfmadd ymm", 8, peak_loop_avx2});
  if (cnnfast::cpu_supports_isa("avx512")) loops.push_back({"avx512", "AVX-512 vfmadd zmm", 16, peak_loop_avx512});
#else
  loops.push_back({"baseline", "128-bit vector multiply+add", 4, peak_loop_baseline});
#endif
  return loops;
}

volatile float g_sink[1024];

// GFLOP/s of `loop` on `threads` threads (each runs the loop once), best of `runs`.
double measure_peak(const PeakLoop& loop, int threads, double seconds, int runs) {
  const double flop_per_iter = 2.0 * kAcc * loop.lanes;
  // Calibrate on one thread: iterations for `seconds`.
  long iters = 1000;
  for (;;) {
    const double t0 = now();
    g_sink[0] = loop.run(iters, 1.0f);
    const double dt = now() - t0;
    if (dt > seconds / 4 || iters > (1L << 40)) {
      iters = std::max(1L, long(double(iters) * seconds / std::max(dt, 1e-9)));
      break;
    }
    iters *= 4;
  }
  double best = 0.0;
  for (int r = 0; r < runs; ++r) {
    const double t0 = now();
#pragma omp parallel num_threads(threads)
    g_sink[omp_get_thread_num() & 1023] = loop.run(iters, 1.0f + float(omp_get_thread_num()));
    const double dt = now() - t0;
    best = std::max(best, threads * iters * flop_per_iter / dt * 1e-9);
  }
  return best;
}

// STREAM triad a = b + s*c, GB/s at 12 bytes per element, best of the runs in `seconds`.
double measure_bandwidth(i64 n, int threads, double seconds) {
  Buffer<float> a(n), b(n), c(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (i64 i = 0; i < n; ++i) b.data()[i] = 1.0f, c.data()[i] = 2.0f;
  float* pa = a.data();
  const float *pb = b.data(), *pc = c.data();
  double best = 0.0;
  const double start = now();
  for (int r = 0; r < 4 || now() - start < seconds; ++r) {  // the first run is a warm-up
    const double t0 = now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 i = 0; i < n; ++i) pa[i] = pb[i] + 3.0f * pc[i];
    const double dt = now() - t0;
    if (r > 0) best = std::max(best, 12.0 * double(n) / dt * 1e-9);
  }
  g_sink[0] = pa[n / 2];
  return best;
}

// ---------------------------------------------------------------------------- kernel timing

struct Row {
  std::string layer, kernel, shape;
  int threads = 1;
  bool in_train_step = false;
  bool memory_bound = false;
  double flop = 0, bytes = 0;
  int calls_per_sample = 1;
  std::vector<double> samples;  // seconds per call
  double median = 0, min = 0;
};

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void time_row(Row& row, const std::function<void()>& fn, const Options& o) {
  fn();  // warm-up: thread pool, packing buffers, caches
  fn();
  const double t0 = now();
  fn();
  const double one = now() - t0;
  int calls = 1;
  if (one < o.min_sample) calls = int(std::min(10000.0, std::ceil(o.min_sample / std::max(one, 1e-9))));
  row.calls_per_sample = calls;
  for (int r = 0; r < o.repeat; ++r) {
    const double s = now();
    for (int c = 0; c < calls; ++c) fn();
    row.samples.push_back((now() - s) / calls);
  }
  row.median = median_of(row.samples);
  row.min = *std::min_element(row.samples.begin(), row.samples.end());
}

std::string shape_str(std::initializer_list<i64> dims) {
  std::string s = "[";
  bool first = true;
  for (i64 d : dims) {
    if (!first) s += ",";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

struct Bench {
  Options o;
  int threads = 1;
  bool progress = false;  // "timing ..." on stderr, when it is a terminal
  std::vector<Row> rows;

  Row& add(const char* layer, const char* kernel, std::string shape, bool train, bool memory, double flop, double bytes,
           int row_threads, const std::function<void()>& fn) {
    Row r;
    r.layer = layer;
    r.kernel = kernel;
    r.shape = std::move(shape);
    r.threads = row_threads;
    r.in_train_step = train;
    r.memory_bound = memory;
    r.flop = flop;
    r.bytes = bytes;
    if (progress) {
      std::fprintf(stderr, "\r  timing %-8s %-24s", layer, kernel);
      std::fflush(stderr);
    }
    time_row(r, fn, o);
    rows.push_back(std::move(r));
    return rows.back();
  }

  // conv2d_forward and conv2d_backward at one layer's shape.
  void conv(const char* layer, i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, bool first_layer) {
    const i64 pad = 0, Ho = H + 2 * pad - R + 1, Wo = W + 2 * pad - S + 1;
    Buffer<float> x = random_floats(N * C * H * W), w = random_floats(K * C * R * S), b = random_floats(K);
    Buffer<float> y(N * K * Ho * Wo), dy = random_floats(N * K * Ho * Wo), dx(N * C * H * W);
    Buffer<float> dw(K * C * R * S), db(K);
    const double flop = 2.0 * N * K * Ho * Wo * C * R * S;
    const double nx = N * C * H * W, nw = K * C * R * S, ny = N * K * Ho * Wo;
    const std::string shp = "x" + shape_str({N, C, H, W}) + " w" + shape_str({K, C, R, S});
    add(layer, "conv2d_forward*", shp + " -> y" + shape_str({N, K, Ho, Wo}), false, false, flop,
        4.0 * (nx + nw + K + ny), threads,
        [&] { cnnfast::conv2d_forward(y.data(), x.data(), w.data(), b.data(), N, C, H, W, K, R, S, pad); });
    // conv2d_backward computes dw and db, and dx unless it is null: the first layer of a network
    // skips dx in training, every other conv computes all three. Both variants are timed for
    // both layers; the one a training step does not call is starred.
    const std::string bshp = "x" + shape_str({N, C, H, W}) + " dy" + shape_str({N, K, Ho, Wo});
    add(layer, "conv2d_backward dw,db*", bshp, false, false, flop, 4.0 * (nx + ny + nw + K), threads, [&] {
      cnnfast::conv2d_backward(nullptr, dw.data(), db.data(), x.data(), w.data(), dy.data(), N, C, H, W, K, R, S, pad);
    });
    add(layer, "conv2d_backward dx,dw,db*", bshp, false, false, 2 * flop, 4.0 * (nx + ny + nw + K + nw + nx), threads,
        [&] {
          cnnfast::conv2d_backward(dx.data(), dw.data(), db.data(), x.data(), w.data(), dy.data(), N, C, H, W, K, R, S,
                                   pad);
        });
    // The block a training step calls: conv2d + ReLU + max_pool2d(2) in one kernel, forward and
    // backward (from the pooled gradient and the forward's argmax). FLOP: the convolution's.
    const i64 Hq = Ho / 2, Wq = Wo / 2;
    Buffer<float> py(N * K * Hq * Wq), pdy = random_floats(N * K * Hq * Wq);
    Buffer<std::int32_t> argmax(N * K * Hq * Wq);
    const std::string fshp = shp + " -> " + shape_str({N, K, Hq, Wq});
    add(layer, "conv+relu+pool forward", fshp, true, false, flop, 4.0 * (nx + nw + K + 2.0 * N * K * Hq * Wq), threads,
        [&] {
          cnnfast::conv2d_relu_max_pool2d_forward(py.data(), argmax.data(), x.data(), w.data(), b.data(), N, C, H, W, K,
                                                  R, S, pad, 2);
        });
    add(layer, first_layer ? "conv+relu+pool bwd dw,db" : "conv+relu+pool bwd dw,db*", bshp, first_layer, false, flop,
        4.0 * (nx + 2.0 * N * K * Hq * Wq + nw + K), threads, [&] {
          cnnfast::conv2d_relu_max_pool2d_backward(nullptr, dw.data(), db.data(), x.data(), w.data(), pdy.data(),
                                                   argmax.data(), N, C, H, W, K, R, S, pad, 2);
        });
    add(layer, first_layer ? "conv+relu+pool bwd dx,dw,db*" : "conv+relu+pool bwd dx,dw,db", bshp, !first_layer, false,
        2 * flop, 4.0 * (nx + 2.0 * N * K * Hq * Wq + nw + K + nw + nx), threads, [&] {
          cnnfast::conv2d_relu_max_pool2d_backward(dx.data(), dw.data(), db.data(), x.data(), w.data(), pdy.data(),
                                                   argmax.data(), N, C, H, W, K, R, S, pad, 2);
        });
  }

  // relu forward/backward on [N, C, H, W], then max_pool2d k=2 forward/backward.
  // relu forward/backward on [N, C, H, W], then max_pool2d k=2 forward (plain, and with the
  // ReLU fused in, as a training step calls it: nn.Sequential runs each ReLU + MaxPool2d pair as
  // one max_pool2d(relu=true), so relu_forward/backward are not called) and backward.
  void relu_pool(const char* relu_layer, const char* pool_layer, i64 N, i64 C, i64 H, i64 W) {
    const i64 n = N * C * H * W, k = 2, Ho = H / k, Wo = W / k, no = N * C * Ho * Wo;
    Buffer<float> x = random_floats(n), dy = random_floats(n), y(n), dx(n);
    const std::string shp = shape_str({N, C, H, W});
    add(relu_layer, "relu_forward*", shp, false, true, double(n), 8.0 * n, threads,
        [&] { cnnfast::relu_forward(y.data(), x.data(), n); });
    add(relu_layer, "relu_backward*", shp, false, true, double(n), 12.0 * n, threads,
        [&] { cnnfast::relu_backward(dx.data(), x.data(), dy.data(), n); });
    Buffer<float> py(no), pdy = random_floats(no);
    Buffer<std::int32_t> argmax(no);
    const std::string pshp = shp + " -> " + shape_str({N, C, Ho, Wo});
    add(pool_layer, "max_pool2d_forward*", pshp, false, true, double(no) * (k * k - 1), 4.0 * n + 8.0 * no, threads,
        [&] { cnnfast::max_pool2d_forward(py.data(), argmax.data(), x.data(), N, C, H, W, k, false); });
    // Last, so that the backward below routes through the fused forward's argmax (-1: no gradient).
    add(pool_layer, "max_pool2d_forward relu*", pshp, false, true, double(no) * k * k, 4.0 * n + 8.0 * no, threads,
        [&] { cnnfast::max_pool2d_forward(py.data(), argmax.data(), x.data(), N, C, H, W, k, true); });
    add(pool_layer, "max_pool2d_backward*", shape_str({N, C, Ho, Wo}) + " -> " + shp, false, true, 0.0,
        8.0 * no + 4.0 * n, threads,
        [&] { cnnfast::max_pool2d_backward(dx.data(), argmax.data(), pdy.data(), N, C, H, W, Ho, Wo); });
  }

  void dropout(i64 N, i64 F) {
    const i64 n = N * F;
    Buffer<float> x = random_floats(n), y(n), dy = random_floats(n), dx(n);
    Buffer<std::uint8_t> mask(n);
    std::uint64_t seed = 1;
    add("dropout", "dropout_forward", shape_str({N, F}) + " p=0.5", true, true, double(n), 9.0 * n, threads,
        [&] { cnnfast::dropout_forward(y.data(), mask.data(), x.data(), n, 0.5f, seed++); });
    add("dropout", "dropout_backward", shape_str({N, F}), true, true, double(n), 9.0 * n, threads,
        [&] { cnnfast::dropout_backward(dx.data(), mask.data(), dy.data(), n, 0.5f); });
  }

  void linear(i64 N, i64 I, i64 O) {
    Buffer<float> x = random_floats(N * I), w = random_floats(O * I), b = random_floats(O);
    Buffer<float> y(N * O), dy = random_floats(N * O), dx(N * I), dw(O * I), db(O);
    const double nx = N * I, nw = O * I, ny = N * O;
    const std::string shp = "x" + shape_str({N, I}) + " w" + shape_str({O, I});
    add("fc", "linear_forward", shp, true, false, 2.0 * N * I * O, 4.0 * (nx + nw + O + ny), threads,
        [&] { cnnfast::linear_forward(y.data(), x.data(), w.data(), b.data(), N, I, O); });
    add("fc", "linear_backward", shp + " -> dx,dw,db", true, false, 4.0 * N * I * O, 4.0 * (nx + nw + ny + nx + nw + O),
        threads,
        [&] { cnnfast::linear_backward(dx.data(), dw.data(), db.data(), x.data(), w.data(), dy.data(), N, I, O); });
  }

  void softmax(i64 N, i64 K) {
    Buffer<float> logits = random_floats(N * K), dlogits(N * K);
    Buffer<std::int64_t> labels(N);
    for (i64 i = 0; i < N; ++i) labels.data()[i] = i64(g_rng() % std::uint64_t(K));
    add("loss", "softmax_cross_entropy", shape_str({N, K}) + " int64 labels", true, true, 4.0 * N * K,
        8.0 * N * K + 8.0 * N, threads, [&] {
          g_sink[1] = float(cnnfast::softmax_cross_entropy(dlogits.data(), logits.data(), labels.data(), N, K, 0.0f));
        });
  }

  // One optimizer step of the whole model: one adam_step per parameter tensor, as cnnfast.optim.Adam does.
  void adam() {
    const i64 sizes[] = {32 * 1 * 3 * 3, 32, 64 * 32 * 3 * 3, 64, 10 * 1600, 10};
    std::vector<Buffer<float>> p, g, m, v;
    i64 total = 0;
    for (i64 s : sizes) {
      p.push_back(random_floats(s));
      g.push_back(random_floats(s));
      m.push_back(Buffer<float>(s));
      v.push_back(Buffer<float>(s));
      total += s;
    }
    i64 step = 0;
    add("optim", "adam_step", std::to_string(total) + " params in 6 tensors", true, true, 12.0 * total, 28.0 * total,
        threads, [&] {
          ++step;
          for (size_t t = 0; t < p.size(); ++t)
            cnnfast::adam_step(p[t].data(), m[t].data(), v[t].data(), g[t].data(), p[t].n, step, 1e-3f, 0.9f, 0.999f,
                               1e-8f, 0.0f);
        });
  }

  // BatchNorm2d at a convolution's output: not in the default model (its rows are not in the
  // training step), for the models that add it. Training forward reads x three times (mean,
  // variance, normalise) and writes y; backward reads x and dy twice and writes dx.
  void batch_norm(const char* layer, i64 N, i64 C, i64 H, i64 W) {
    const i64 L = H * W, n = N * C * L;
    Buffer<float> x = random_floats(n), dy = random_floats(n), y(n), dx(n);
    Buffer<float> gamma = random_floats(C), beta = random_floats(C), mean(C), invstd(C), rm(C), rv(C), dg(C), db(C);
    for (i64 c = 0; c < C; ++c) rv.data()[c] = 1.0f;
    const std::string shp = shape_str({N, C, H, W});
    add(layer, "batch_norm_forward_train*", shp, false, true, 7.0 * n, 16.0 * n, threads, [&] {
      cnnfast::batch_norm_forward_train(y.data(), mean.data(), invstd.data(), rm.data(), rv.data(), x.data(),
                                        gamma.data(), beta.data(), N, C, L, 1e-5f, 0.1f);
    });
    add(layer, "batch_norm_forward_eval*", shp, false, true, 3.0 * n, 8.0 * n, threads, [&] {
      cnnfast::batch_norm_forward_eval(y.data(), x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), N, C, L,
                                       1e-5f);
    });
    add(layer, "batch_norm_backward*", shp, false, true, 9.0 * n, 20.0 * n, threads, [&] {
      cnnfast::batch_norm_backward(dx.data(), dg.data(), db.data(), x.data(), gamma.data(), dy.data(), mean.data(),
                                   invstd.data(), N, C, L);
    });
  }

  void gemm(i64 n) {
    Buffer<float> a = random_floats(n * n), b = random_floats(n * n), c(n * n);
    const double flop = 2.0 * n * n * n, bytes = 4.0 * 3 * n * n;
    const std::string shp = shape_str({n, n}) + " x " + shape_str({n, n});
    add("gemm", "sgemm_parallel", shp, false, false, flop, bytes, threads,
        [&] { cnnfast::sgemm_parallel(false, false, n, n, n, a.data(), n, b.data(), n, c.data(), n, false); });
    add("gemm", "sgemm (1 thread)", shp, false, false, flop, bytes, 1,
        [&] { cnnfast::sgemm(false, false, n, n, n, a.data(), n, b.data(), n, c.data(), n, false); });
  }
};

// ---------------------------------------------------------------------------- output

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\')
      out += '\\', out += ch;
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else
      out += ch;
  }
  return out + "\"";
}

std::string json_num(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

struct PeakResult {
  PeakLoop loop;
  double one = 0, all = 0;
};

}  // namespace

// The instruction sets compiled in, each marked where the CPU cannot run it
std::string compiled_isa_names() {
  const cnnfast::IsaKernels* compiled[8];
  const int n = cnnfast::compiled_isas(compiled, 8);
  std::string names;
  for (int i = 0; i < n; ++i)
    names += std::string(i ? ", " : "") + compiled[i]->name +
             (cnnfast::cpu_supports_isa(compiled[i]->name) ? "" : " (not supported by this CPU)");
  return names;
}

// CNNFAST_ISA, read as the Python package reads it (python/cnnfast/__init__.py): spaces trimmed,
// any case, and a name that is not available warned about and ignored
void apply_isa_variable() {
  const char* env = std::getenv("CNNFAST_ISA");
  std::string name = env ? env : "";
  name.erase(0, name.find_first_not_of(" \t\n"));
  name.erase(name.find_last_not_of(" \t\n") + 1);
  for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (!name.empty() && !cnnfast::set_isa(name.c_str()))
    std::fprintf(stderr, "bench_kernels: warning: CNNFAST_ISA=%s ignored: not available here (compiled: %s)\n",
                 name.c_str(), compiled_isa_names().c_str());
}

int main(int argc, char** argv) {
  Options o;
  if (!parse_args(argc, argv, &o)) {
    usage(stderr);
    return 2;
  }
  apply_isa_variable();  // (--isa, below, overrides it)
  if (!o.isa.empty() && !cnnfast::set_isa(o.isa.c_str())) {
    std::fprintf(stderr, "bench_kernels: --isa %s is not available; compiled: %s\n", o.isa.c_str(),
                 compiled_isa_names().c_str());
    return 2;
  }
  if (o.threads > 0) cnnfast::set_num_threads(o.threads);
  const int threads = cnnfast::get_num_threads();
  const cnnfast::IsaKernels& isa = cnnfast::active_isa();
  const cnnfast::MicroKernel& mk = *isa.gemm;
  double load_start[3] = {0, 0, 0}, load_end[3] = {0, 0, 0};
  if (getloadavg(load_start, 3) < 0) load_start[0] = load_start[1] = load_start[2] = NAN;
  const double t_start = now();

  // ---- 1. peak and bandwidth
  std::fprintf(stderr, "measuring peak (FMA loop) and bandwidth (triad) ...\n");
  std::vector<PeakResult> peaks;
  const int peak_runs = o.tiny ? 1 : 3;
  for (const PeakLoop& loop : supported_peak_loops()) {
    PeakResult r{loop};
    r.one = measure_peak(loop, 1, o.peak_seconds, peak_runs);
    r.all = threads == 1 ? r.one : measure_peak(loop, threads, o.peak_seconds, peak_runs);
    peaks.push_back(r);
  }
  // The peak the rows are compared with: that of the instruction set in use (--isa avx2 on an
  // AVX-512 machine: the AVX2 peak), else the widest the CPU supports (NEON: the 128-bit loop)
  PeakResult* chosen = &peaks.back();
  for (PeakResult& p : peaks)
    if (std::strcmp(p.loop.isa, cnnfast::active_isa().name) == 0) chosen = &p;
  PeakResult& machine = *chosen;
  // Triad arrays as large as the model's largest activation (relu1's input), so that the
  // memory-bound rows are compared with the bandwidth of the cache level their data lives in.
  const i64 bw_elems = std::max<i64>(o.batch * 32 * 26 * 26, 1 << 16);
  double bw_one = measure_bandwidth(bw_elems, 1, o.bw_seconds);
  double bw_all = threads == 1 ? bw_one : measure_bandwidth(bw_elems, threads, o.bw_seconds);
  auto peak_at = [&](int t) { return t == 1 ? machine.one : machine.all; };
  auto bw_at = [&](int t) { return t == 1 ? bw_one : bw_all; };

  // ---- 2. kernels at the default model's shapes
  Bench bench;
  bench.o = o;
  bench.threads = threads;
  bench.progress = isatty(2);
  const i64 N = o.batch;
  bench.conv("conv1", N, 1, 28, 28, 32, 3, 3, true);
  bench.relu_pool("relu1", "pool1", N, 32, 26, 26);
  bench.conv("conv2", N, 32, 13, 13, 64, 3, 3, false);
  bench.relu_pool("relu2", "pool2", N, 64, 11, 11);
  bench.dropout(N, 1600);
  bench.linear(N, 1600, 10);
  bench.softmax(N, 10);
  bench.adam();
  bench.batch_norm("bn", N, 32, 26, 26);
  bench.gemm(o.gemm_size);
  // Measure the ceilings again and keep the best: another process that held a core for part
  // of the run then spoils at most one of the two measurements.
  const double start_one = machine.one, start_all = machine.all;
  const double end_one = measure_peak(machine.loop, 1, o.peak_seconds, peak_runs);
  const double end_all = threads == 1 ? end_one : measure_peak(machine.loop, threads, o.peak_seconds, peak_runs);
  machine.one = std::max(machine.one, end_one);
  machine.all = std::max(machine.all, end_all);
  bw_one = std::max(bw_one, measure_bandwidth(bw_elems, 1, o.bw_seconds));
  bw_all = threads == 1 ? bw_one : std::max(bw_all, measure_bandwidth(bw_elems, threads, o.bw_seconds));
  if (bench.progress) std::fprintf(stderr, "\r%60s\r", "");
  if (getloadavg(load_end, 3) < 0) load_end[0] = load_end[1] = load_end[2] = NAN;

  double step_seconds = 0;
  for (const Row& r : bench.rows)
    if (r.in_train_step) step_seconds += r.median;

  // ---- 3. the table
  std::printf("cnnfast bench_kernels: %s, %d logical CPUs; GEMM micro-kernel %s (%dx%d); %d threads; batch %lld\n",
              cpu_model().c_str(), omp_get_num_procs(), isa.name, mk.mr, mk.nr, threads, (long long)N);
  std::printf("compiler %s, flags %s\n", CNNFAST_COMPILER, CNNFAST_CXX_FLAGS);
  std::printf("load average %.2f at start, %.2f at end (other processes compete for the cores)\n", load_start[0],
              load_end[0]);
  for (const PeakResult& p : peaks)
    std::printf("peak %-8s %-20s %8.1f GFLOP/s on 1 thread, %8.1f on %d\n", p.loop.isa, p.loop.what, p.one, p.all,
                threads);
  std::printf("bandwidth (triad, 3 x %.1f MiB)      %8.1f GB/s on 1 thread, %8.1f on %d\n",
              double(bw_elems) * 4 / (1 << 20), bw_one, bw_all, threads);
  if (threads > 1 && (machine.all < 0.8 * threads * machine.one || bw_all < 0.8 * bw_one * std::min(threads, 2)))
    std::printf(
        "WARNING: %d threads reach only %.2fx the 1-thread peak and %.2fx the 1-thread bandwidth: other\n"
        "         processes are probably using the cores, so the timings below are unreliable.\n",
        threads, machine.all / machine.one, bw_all / bw_one);
  if (!o.tiny &&
      (std::min(start_one, end_one) < 0.85 * machine.one || std::min(start_all, end_all) < 0.85 * machine.all))
    std::printf(
        "WARNING: the %s peak changed during the run (1 thread %.0f then %.0f, %d threads %.0f then %.0f\n"
        "         GFLOP/s): the machine was busy for part of it, so the timings below are unreliable.\n",
        machine.loop.isa, start_one, end_one, threads, start_all, end_all);
  std::printf("%%peak: of the %s peak at the row's threads; %%bw: of the triad bandwidth. median/min per call.\n\n",
              machine.loop.isa);
  std::printf("%-7s %-25s %-48s %3s %10s %10s %9s %6s %8s %6s\n", "layer", "kernel", "shape", "thr", "median ms",
              "min ms", "GFLOP/s", "%peak", "GB/s", "%bw");
  for (const Row& r : bench.rows) {
    const double gf = r.flop / r.median * 1e-9, gb = r.bytes / r.median * 1e-9;
    char gfs[16] = "-", pct[16] = "-", gbs[16] = "-", pbw[16] = "-";
    if (r.flop > 0) {
      std::snprintf(gfs, sizeof gfs, "%.1f", gf);
      std::snprintf(pct, sizeof pct, "%.1f", 100.0 * gf / peak_at(r.threads));
    }
    if (r.memory_bound || r.kernel.rfind("linear", 0) == 0) {
      std::snprintf(gbs, sizeof gbs, "%.1f", gb);
      std::snprintf(pbw, sizeof pbw, "%.1f", 100.0 * gb / bw_at(r.threads));
    }
    std::printf("%-7s %-25s %-48s %3d %10.4f %10.4f %9s %6s %8s %6s\n", r.layer.c_str(), r.kernel.c_str(),
                r.shape.c_str(), r.threads, r.median * 1e3, r.min * 1e3, gfs, pct, gbs, pbw);
  }
  std::printf(
      "\n* timed, but not called by a training step: each Conv2d-ReLU-MaxPool2d block runs as one\n"
      "  conv2d_relu_max_pool2d (conv+relu+pool rows), the first without dx, the second with it.\n");
  std::printf(
      "training step (sum of the medians of the kernels one step calls): %.3f ms = %.0f images/s at batch %lld\n",
      step_seconds * 1e3, double(N) / step_seconds, (long long)N);

  // ---- 4. JSON
  if (!o.json.empty()) {
    std::ostringstream j;
    const cnnfast::IsaKernels* compiled[8];
    const int nc = cnnfast::compiled_isas(compiled, 8);
    j << "{\n  \"benchmark\": \"cnnfast bench_kernels\",\n";
    j << "  \"machine\": {\"cpu\": " << json_str(cpu_model()) << ", \"logical_cpus\": " << omp_get_num_procs()
      << ", \"loadavg_start\": [" << json_num(load_start[0]) << ", " << json_num(load_start[1]) << ", "
      << json_num(load_start[2]) << "], \"loadavg_end\": [" << json_num(load_end[0]) << ", " << json_num(load_end[1])
      << ", " << json_num(load_end[2]) << "]},\n";
    j << "  \"build\": {\"compiler\": " << json_str(CNNFAST_COMPILER)
      << ", \"cxx_flags\": " << json_str(CNNFAST_CXX_FLAGS) << ", \"build_type\": " << json_str(CNNFAST_BUILD_TYPE)
      << "},\n";
    j << "  \"isa\": " << json_str(isa.name) << ", \"gemm_tile\": [" << mk.mr << ", " << mk.nr << "],\n";
    j << "  \"isa_compiled\": [";
    for (int i = 0; i < nc; ++i) j << (i ? ", " : "") << json_str(compiled[i]->name);
    j << "], \"isa_supported\": [";
    bool first = true;
    for (int i = 0; i < nc; ++i)
      if (cnnfast::cpu_supports_isa(compiled[i]->name))
        j << (first ? "" : ", ") << json_str(compiled[i]->name), first = false;
    j << "],\n";
    j << "  \"threads\": " << threads << ", \"batch\": " << N << ", \"repeat\": " << o.repeat
      << ", \"tiny\": " << (o.tiny ? "true" : "false") << ",\n";
    j << "  \"peak\": {\"isa\": " << json_str(machine.loop.isa) << ", \"gflops_1_thread\": " << json_num(machine.one)
      << ", \"gflops_threads\": " << json_num(machine.all) << ", \"accumulators\": " << kAcc << ", \"per_isa\": {";
    for (size_t i = 0; i < peaks.size(); ++i)
      j << (i ? ", " : "") << json_str(peaks[i].loop.isa) << ": {\"lanes\": " << peaks[i].loop.lanes
        << ", \"gflops_1_thread\": " << json_num(peaks[i].one) << ", \"gflops_threads\": " << json_num(peaks[i].all)
        << "}";
    j << "}},\n";
    j << "  \"bandwidth\": {\"kernel\": \"triad\", \"bytes_per_element\": 12, \"array_bytes\": " << bw_elems * 4
      << ", \"gbs_1_thread\": " << json_num(bw_one) << ", \"gbs_threads\": " << json_num(bw_all) << "},\n";
    j << "  \"train_step\": {\"seconds\": " << json_num(step_seconds)
      << ", \"images_per_s\": " << json_num(double(N) / step_seconds) << "},\n";
    j << "  \"kernels\": [\n";
    for (size_t i = 0; i < bench.rows.size(); ++i) {
      const Row& r = bench.rows[i];
      const double gf = r.flop / r.median * 1e-9, gb = r.bytes / r.median * 1e-9;
      std::string kernel = r.kernel;
      if (!kernel.empty() && kernel.back() == '*') kernel.pop_back();
      j << "    {\"layer\": " << json_str(r.layer) << ", \"kernel\": " << json_str(kernel)
        << ", \"shape\": " << json_str(r.shape) << ", \"threads\": " << r.threads
        << ", \"in_train_step\": " << (r.in_train_step ? "true" : "false")
        << ", \"bound\": " << (r.memory_bound ? "\"memory\"" : "\"compute\"") << ", \"flop\": " << json_num(r.flop)
        << ", \"bytes\": " << json_num(r.bytes) << ", \"median_s\": " << json_num(r.median)
        << ", \"min_s\": " << json_num(r.min) << ", \"gflops\": " << (r.flop > 0 ? json_num(gf) : "null")
        << ", \"pct_peak\": " << (r.flop > 0 ? json_num(100.0 * gf / peak_at(r.threads)) : "null")
        << ", \"gbs\": " << json_num(gb) << ", \"pct_bandwidth\": " << json_num(100.0 * gb / bw_at(r.threads))
        << ", \"calls_per_sample\": " << r.calls_per_sample << ", \"samples_s\": [";
      for (size_t s = 0; s < r.samples.size(); ++s) j << (s ? ", " : "") << json_num(r.samples[s]);
      j << "]}" << (i + 1 < bench.rows.size() ? "," : "") << "\n";
    }
    j << "  ],\n  \"seconds\": " << json_num(now() - t_start) << "\n}\n";
    std::ofstream f(o.json);
    f << j.str();
    if (!f) {
      std::fprintf(stderr, "bench_kernels: cannot write %s\n", o.json.c_str());
      return 1;
    }
    std::printf("wrote %s\n", o.json.c_str());
  }
  return 0;
}
