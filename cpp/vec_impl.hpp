// The portable vector of the instruction set a per-ISA file is compiled for (CNNFAST_VEC_BYTES: 16
// baseline/NEON, 32 AVX2, 64 AVX-512) and its unaligned load and store. Included inside the file's
// namespace cnnfast::<isa> and target pragmas. (No include guard: each file includes it once.)

typedef float vec __attribute__((vector_size(CNNFAST_VEC_BYTES)));
inline vec load(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { __builtin_memcpy(p, &v, sizeof v); }
