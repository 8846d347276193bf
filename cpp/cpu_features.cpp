// Which instruction set this CPU has, which micro-kernel is in use, and how many threads.
// The micro-kernel is chosen once at load (the best the CPU supports); CNNFAST_ISA, read by
// the Python package at import, or set_isa() may force a lower one.
#include "gemm.hpp"

#include <atomic>
#include <cstring>
#include <omp.h>

namespace cnnfast {

extern const MicroKernel microkernel_baseline;
#ifdef CNNFAST_HAVE_AVX2
extern const MicroKernel microkernel_avx2;
#endif
#ifdef CNNFAST_HAVE_AVX512
extern const MicroKernel microkernel_avx512;
#endif

namespace {

const MicroKernel* const kCompiled[] = {
    &microkernel_baseline,
#ifdef CNNFAST_HAVE_AVX2
    &microkernel_avx2,
#endif
#ifdef CNNFAST_HAVE_AVX512
    &microkernel_avx512,
#endif
};
constexpr int kNumCompiled = sizeof(kCompiled) / sizeof(kCompiled[0]);

const MicroKernel* best_supported() {
  const MicroKernel* best = kCompiled[0];
  for (const MicroKernel* mk : kCompiled)
    if (cpu_supports_isa(mk->name)) best = mk;
  return best;
}

std::atomic<const MicroKernel*> g_kernel{nullptr};
std::atomic<int> g_threads{0};

}  // namespace

bool cpu_supports_isa(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return false;
}

const MicroKernel& active_microkernel() {
  const MicroKernel* mk = g_kernel.load(std::memory_order_acquire);
  if (!mk) {
    mk = best_supported();
    g_kernel.store(mk, std::memory_order_release);
  }
  return *mk;
}

bool set_isa(const char* name) {
  for (const MicroKernel* mk : kCompiled)
    if (std::strcmp(mk->name, name) == 0) {
      if (!cpu_supports_isa(name)) return false;
      g_kernel.store(mk, std::memory_order_release);
      return true;
    }
  return false;
}

int compiled_microkernels(const MicroKernel** out, int max) {
  int n = 0;
  for (const MicroKernel* mk : kCompiled)
    if (n < max) out[n++] = mk;
  return n;
}

void set_num_threads(int n) { g_threads.store(n > 0 ? n : 1); }

int get_num_threads() {
  int n = g_threads.load();
  if (n <= 0) {  // first use: OpenMP's default (honours OMP_NUM_THREADS)
    n = omp_get_max_threads();
    g_threads.store(n);
  }
  return n;
}

int threads_for(double work) {
  // A fork/join costs a few microseconds: below ~64k multiply-adds one thread is faster.
  return work < 65536.0 ? 1 : get_num_threads();
}

}  // namespace cnnfast
