// OpenMP where the compiler has it; without it (Apple's clang without libomp) every kernel runs
// on one thread: the pragmas are ignored and these stand-ins answer for the runtime.
#pragma once

#if defined(_OPENMP)
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_max_threads() { return 1; }
inline int omp_get_num_procs() { return 1; }
#endif
