// The register tile of the products that read their B operand in place (Winograd's, the pointwise
// forward's): MR rows of output (CNNFAST_MR, the GEMM micro-kernel's) by NV vectors of columns.
// Included inside a per-ISA file's namespace and target pragmas, after vec_impl.hpp. (No include
// guard: each file includes it once.)

constexpr int VL = CNNFAST_VEC_BYTES / 4;
constexpr int MR = CNNFAST_MR;
#if defined(CNNFAST_ISA_NEON)
constexpr int NV = 3;  // 8 x 12 in 24 of the 32 q registers, as gemm_microkernel_neon.cpp
#else
constexpr int NV = 2;  // MR x 2 vectors, as gemm_microkernel.cpp
#endif
constexpr int NR = NV * VL;

// c[i*ldc + j] (+)= sum_k a[k*MR + i] * b[k*ldb + j] for an MR x NR tile (b's rows ldb apart); with
// row_init, each row's sum starts from row_init[i] (a bias) instead of 0. (W = 1: an MR x VL tile,
// for a last panel of at most VL columns; each column's sums are the same either way.)
template <int W = NV>
void tile_product(i64 kc, const float* a, const float* b, i64 ldb, float* c, i64 ldc, bool accumulate,
                  const float* row_init = nullptr) {
  vec acc[MR][W];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < W; ++j) acc[i][j] = row_init ? vec{} + row_init[i] : vec{};
  for (i64 k = 0; k < kc; ++k) {
    vec bk[W];
    for (int j = 0; j < W; ++j) bk[j] = load(b + k * ldb + j * VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float ai = a[k * MR + i];
      for (int j = 0; j < W; ++j) acc[i][j] += ai * bk[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < W; ++j) {
      float* cij = c + i * ldc + j * VL;
      store(cij, accumulate ? load(cij) + acc[i][j] : acc[i][j]);
    }
}
