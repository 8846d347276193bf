// Which instruction sets this CPU runs, which kernel table is in use, and how many threads.
// The table is chosen once at load (the best the CPU supports); CNNFAST_ISA, read by the Python
// package at import, or set_isa() may force a lower one.
#include <atomic>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "isa.hpp"
#include "parallel.hpp"

namespace cnnfast {

// isa_table.cpp, compiled once per instruction set
namespace baseline {
extern const IsaKernels table;
}
#ifdef CNNFAST_HAVE_AVX2
namespace avx2 {
extern const IsaKernels table;
}
#endif
#ifdef CNNFAST_HAVE_AVX512
namespace avx512 {
extern const IsaKernels table;
}
#endif
#ifdef CNNFAST_HAVE_NEON
namespace neon {
extern const IsaKernels table;
}
#endif

namespace {

const IsaKernels* const kCompiled[] = {
    &baseline::table,
#ifdef CNNFAST_HAVE_AVX2
    &avx2::table,
#endif
#ifdef CNNFAST_HAVE_AVX512
    &avx512::table,
#endif
#ifdef CNNFAST_HAVE_NEON
    &neon::table,
#endif
};

const IsaKernels* best_supported() {
  const IsaKernels* best = kCompiled[0];
  for (const IsaKernels* t : kCompiled)
    if (cpu_supports_isa(t->name)) best = t;
  return best;
}

std::atomic<const IsaKernels*> g_table{nullptr};
std::atomic<int> g_threads{0};

}  // namespace

bool cpu_supports_isa(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
  if (std::strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#endif
#if defined(__aarch64__)
  if (std::strcmp(name, "neon") == 0) return true;  // Advanced SIMD (with FMA) is part of ARMv8-A
#endif
  return false;
}

const IsaKernels& active_isa() {
  const IsaKernels* t = g_table.load(std::memory_order_acquire);
  if (!t) {
    t = best_supported();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

bool set_isa(const char* name) {
  for (const IsaKernels* t : kCompiled)
    if (std::strcmp(t->name, name) == 0) {
      if (!cpu_supports_isa(name)) return false;
      g_table.store(t, std::memory_order_release);
      return true;
    }
  return false;
}

int compiled_isas(const IsaKernels** out, int max) {
  int n = 0;
  for (const IsaKernels* t : kCompiled)
    if (n < max) out[n++] = t;
  return n;
}

void set_num_threads(int n) { g_threads.store(n > 0 ? n : 1); }

int get_num_threads() {
  int n = g_threads.load();
  if (n <= 0) {  // first use: OpenMP's default (honours OMP_NUM_THREADS); 1 without OpenMP
    n = omp_get_max_threads();
    g_threads.store(n);
  }
#if !defined(_OPENMP)
  n = 1;  // (set_num_threads may have asked for more: there is one thread to give)
#endif
  return n;
}

int threads_for(double work) {
  // A fork/join costs a few microseconds: below ~64k multiply-adds one thread is faster.
  return work < 65536.0 ? 1 : get_num_threads();
}

}  // namespace cnnfast
