// The portable vector of the instruction set a per-ISA file is compiled for (CNNFAST_VEC_BYTES: 16
// baseline/NEON, 32 AVX2, 64 AVX-512), its unaligned load and store, and max_pool2d's rule on such
// vectors (for the kernels that pool). Included inside the file's namespace cnnfast::<isa> and target
// pragmas. (No include guard: each file includes it once.)

typedef float vec __attribute__((vector_size(CNNFAST_VEC_BYTES)));
inline vec load(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { __builtin_memcpy(p, &v, sizeof v); }

#if defined(CNNFAST_ISA_AVX2)
// AVX2's lane mask for the first n lanes (store_first, load_first)
inline __m256i first_lanes(i64 n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

// p[0:n] = v[0:n], n <= VL: one masked store where the ISA has them (the direct forward's last
// segment of a row: scalar stores of its 10 pixels on 26-pixel rows took a fifth of a tile's time;
// Winograd's partial rows: memcpy's calls, a tenth of F(4x4)'s time on 12 x 12). On x86-64 the file
// includes <immintrin.h> before its namespace.
inline void store_first(float* p, vec v, i64 n) {
#if defined(CNNFAST_ISA_AVX512)
  _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), reinterpret_cast<__m512&>(v));
#elif defined(CNNFAST_ISA_AVX2)
  _mm256_maskstore_ps(p, first_lanes(n), reinterpret_cast<__m256&>(v));
#else
  float lanes[CNNFAST_VEC_BYTES / 4];
  store(lanes, v);
  for (i64 l = 0; l < n; ++l) p[l] = lanes[l];
#endif
}

// v[0:n] = p[0:n], 0 in the lanes past n (n < VL): one masked load where the ISA has them
inline vec load_first(const float* p, i64 n) {
#if defined(CNNFAST_ISA_AVX512)
  const __m512 v = _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
  return reinterpret_cast<const vec&>(v);
#elif defined(CNNFAST_ISA_AVX2)
  const __m256 v = _mm256_maskload_ps(p, first_lanes(n));
  return reinterpret_cast<const vec&>(v);
#else
  float lanes[CNNFAST_VEC_BYTES / 4] = {};
  for (i64 l = 0; l < n; ++l) lanes[l] = p[l];
  return load(lanes);
#endif
}

// The int32 vector of the same lanes (indices, comparisons' results)
typedef std::int32_t ivec __attribute__((vector_size(CNNFAST_VEC_BYTES)));

// max_pool2d's rule (max_pool2d_planes) for a window's next candidate, lane by lane: does it
// replace the best so far? It does when larger, or when a NaN where the best is not (a NaN wins).
inline ivec pool_takes(vec candidate, vec best) {
  return (candidate > best) | ((candidate != candidate) & (best == best));
}

// The fused ReLU after the rule: a maximum not > 0 (or NaN) gives index -1, one <= 0 gives +0
inline void pool_relu(vec& best, ivec& index) {
  const vec zero = {};
  index = best > zero ? index : ivec{} - 1;
  best = best <= zero ? zero : best;
}
