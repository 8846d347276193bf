// The instruction set a per-ISA file is compiled for. CMake compiles each of those files once per
// instruction set, defining CNNFAST_ISA (the table's name, also the namespace of the file's
// functions: cnnfast::avx2, ...) and CNNFAST_ISA_<NAME> = 1. The code between CNNFAST_TARGET_BEGIN
// and CNNFAST_TARGET_END (after every #include) is compiled for that instruction set, as Highway
// does it: by a target pragma rather than by -m flags on the whole file, so that inline functions
// of the headers (std::vector's, ours) keep the baseline instruction set. Compiled with -mavx2,
// their out-of-line copies would carry AVX2 instructions, and the linker, keeping one copy of
// each, could hand such a copy to baseline code that runs on a CPU without AVX2.
#pragma once

#define CNNFAST_STR2(a) #a
#define CNNFAST_STR(a) CNNFAST_STR2(a)

#if defined(CNNFAST_ISA_AVX512)
#define CNNFAST_TARGET_FEATURES "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"
#elif defined(CNNFAST_ISA_AVX2)
#define CNNFAST_TARGET_FEATURES "avx2,fma"
#endif

#if !defined(CNNFAST_TARGET_FEATURES)  // baseline and NEON: the compiler's default target
#define CNNFAST_TARGET_BEGIN
#define CNNFAST_TARGET_END
#elif defined(__clang__)
#define CNNFAST_TARGET_BEGIN \
  _Pragma(CNNFAST_STR(clang attribute push(__attribute__((target(CNNFAST_TARGET_FEATURES))), apply_to = function)))
#define CNNFAST_TARGET_END _Pragma("clang attribute pop")
#elif defined(__GNUC__)
#define CNNFAST_TARGET_BEGIN _Pragma("GCC push_options") _Pragma(CNNFAST_STR(GCC target(CNNFAST_TARGET_FEATURES)))
#define CNNFAST_TARGET_END _Pragma("GCC pop_options")
#else
#error "per-ISA kernels need GCC or Clang (CMakeLists.txt builds them only there)"
#endif
