// One instruction set's table of kernels (isa.hpp), compiled once per instruction set like the
// kernels it lists; cpu_features.cpp chooses among the tables.
#include "isa.hpp"
#include "isa_target.hpp"

namespace cnnfast {
namespace CNNFAST_ISA {

// Defined in this instruction set's objects (CMakeLists.txt lists them), all in namespace cnnfast::<isa>
extern const MicroKernel gemm_microkernel;  // gemm_microkernel.cpp (gemm_microkernel_neon.cpp on AArch64)
void direct_rows_forward_kernel(float* y, const float* src, i64 Ws, const i64* tap_offset, const float* w,
                                const float* b, i64 K, i64 T, i64 Wo, i64 P, i64 oh0, i64 oh1);
void direct_weight_grad_kernel(float* dw, const float* dy, const float* col, i64 K, i64 T, i64 P);
void split_phases2(float* dst, const float* x, const ConvShape& s, i64 plane, i64 Ws);
void few_pixels_forward(float* y, const float* col, i64 ld, const float* w, const float* b, i64 N, i64 K, i64 T,
                        i64 P);  // conv2d_few_pixels_kernels.cpp
void few_pixels_weight_grad(float* dw, const float* dyt, i64 ldd, const float* rows, i64 ldr, i64 K, i64 T, i64 L);
void few_pixels_input_grad(float* drows, i64 ldr, const float* dy, i64 ldd, const float* w, i64 N, i64 K, i64 T, i64 P);
void pointwise_forward(float* y, const float* x, const float* w, i64 out_stride, i64 in_stride, const float* b, i64 N,
                       i64 C, i64 K, i64 P);  // conv2d_pointwise_kernels.cpp
#if defined(CNNFAST_ISA_AVX512)
void pointwise_weight_grad(float* dw, float* db, const float* x, const float* dy, i64 N, i64 C, i64 K, i64 P);
#endif
void linear_forward_rows(float* y, i64 ldy, const float* x, const float* w, const float* b, i64 n0, i64 n1, i64 I,
                         i64 O);  // linear_narrow.cpp
void linear_input_grad_columns(float* dx, const float* dy, const float* w, i64 N, i64 I, i64 O, i64 i0, i64 i1);
void linear_weight_grad_rows(float* dw, const float* dy, const float* x, i64 N, i64 I, i64 O, i64 o0, i64 o1);
void int32_range_block(const std::int32_t* a, i64 n, std::int32_t* low, std::int32_t* high);  // int32_range.cpp
void dropout_mask_groups(std::uint8_t* mask, i64 g0, i64 g1, std::uint64_t seed,
                         std::uint32_t threshold);  // dropout_mask.cpp
#if defined(CNNFAST_ISA_AVX512)
void pool2_plane(float* y, std::int32_t* argmax, const float* x, i64 Ho, i64 Wo, std::int32_t W,
                 bool relu);  // max_pool2d_avx512.cpp
bool pool2_backward_plane(float* dx, const std::int32_t* argmax, const float* dy, i64 H, i64 W, i64 Ho, i64 Wo);
#endif
// conv2d_panels_avx512.cpp on AVX-512, conv2d_panels_portable.cpp elsewhere
void panels_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b, const ConvShape& s,
                    i64 N, i64 pool_k);
void panels_backward(float* dx, float* dw, const float* x, const float* w, DyPanelsSource dy, const ConvShape& s, i64 N,
                     i64 Hu, i64 Wu);
void panels_backward_plain(float* dx, float* dw, float* db, const float* x, const float* w, const float* dy,
                           const ConvShape& s, i64 N);
void transpose(float* dst, i64 ldd, const float* src, i64 lds, i64 rows, i64 cols, i64 rows_out);
extern const int tile_columns;  // conv2d_winograd_kernels.cpp
void winograd_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N,
                      int m);  // conv2d_winograd_kernels.cpp
void winograd_forward_pool2(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                            const ConvShape& s, i64 N);  // conv2d_winograd_kernels.cpp
void winograd_weight_grad(float* dw, const float* x, const float* dy, const ConvShape& s, i64 N, int m);
void winograd_input_grad_stride2(float* dx, const float* dy, const float* w, const ConvShape& s, i64 N);
bool tap_rows_weight_grad(float* dw, float* db, const float* x, const float* dy, const ConvShape& s,
                          i64 N);  // conv2d_tap_rows_impl.hpp, in the panels' files
bool tap_rows_forward(float* y, const float* x, const float* w, const float* b, const ConvShape& s, i64 N);
// conv3x3_pool2_avx512.cpp on AVX-512, conv3x3_pool2.cpp elsewhere
void conv3x3_pool2_forward(float* y, std::int32_t* argmax, const float* x, const float* w, const float* b,
                           const ConvShape& s, i64 N);
bool conv3x3_pool2_backward(float* dw, float* db, const float* x, const float* dy, const std::int32_t* argmax,
                            const ConvShape& s, i64 N);
void tanh_block(float* y, const float* x, i64 n);  // activations_kernels.cpp
void sigmoid_block(float* y, const float* x, i64 n);
void augment_noise(float* noise, i64 draws, std::uint64_t key, std::uint64_t first);  // augment_rows.cpp
void augment_warp_row(float* y, const float* x, const float* m, const float* dx, const float* dy, i64 i, i64 C, i64 H,
                      i64 W, float fill);
#if defined(CNNFAST_ISA_AVX512)
void augment_smooth(float* field, float* rows, const float* gw_padded, const float* gh, i64 H, i64 W);
#endif

extern const IsaKernels table = {
    CNNFAST_STR(CNNFAST_ISA),
    CNNFAST_VEC_BYTES / 4,
    &gemm_microkernel,
    direct_rows_forward_kernel,
    direct_weight_grad_kernel,
    split_phases2,
    few_pixels_forward,
    few_pixels_weight_grad,
    few_pixels_input_grad,
    pointwise_forward,
#if defined(CNNFAST_ISA_AVX512)
    pointwise_weight_grad,
#else
    nullptr,  // (the panels' dw: conv2d_common.cpp's pointwise_weight_grad_takes)
#endif
    linear_forward_rows,
    linear_input_grad_columns,
    linear_weight_grad_rows,
    int32_range_block,
    dropout_mask_groups,
#if defined(CNNFAST_ISA_AVX512)
    pool2_plane,
    pool2_backward_plane,
#else
    nullptr,
    nullptr,  // (max_pool2d.cpp's portable loops serve)
#endif
    panels_forward,
    panels_backward,
    panels_backward_plain,
    transpose,
    winograd_forward,
    winograd_forward_pool2,
    tile_columns,
#if defined(CNNFAST_ISA_AVX512)
    48,  // (conv2d_winograd.cpp)
    33,  // (not 16->16: conv2d_winograd.cpp)
#else
    0,
    32,
#endif
    winograd_weight_grad,
#if defined(CNNFAST_ISA_AVX512)
    false,  // (the panels' dw is faster on AVX-512 than F(3x3, 2x2): conv2d_winograd.cpp)
#else
    true,
#endif
    winograd_input_grad_stride2,
    tap_rows_weight_grad,
    tap_rows_forward,
    conv3x3_pool2_forward,
    conv3x3_pool2_backward,
    tanh_block,
    sigmoid_block,
    augment_noise,
    augment_warp_row,
#if defined(CNNFAST_ISA_AVX512)
    augment_smooth,
#else
    nullptr,  // (sgemm smooths the field)
#endif
};

}  // namespace CNNFAST_ISA
}  // namespace cnnfast
