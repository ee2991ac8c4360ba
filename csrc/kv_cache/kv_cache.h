// Paged KV-cache write: scatter new K/V rows into the per-layer block pools by slot.
//
// k, v [T, Hkv, D] (f32/f16/bf16, contiguous); k_cache, v_cache [num_blocks, block_size, Hkv, D]
// (f32/f16/bf16, contiguous, one dtype); slot_mapping [T] int64. Row t goes to flat slot
// slot_mapping[t] (block slot / block_size, offset slot % block_size); a negative slot is skipped.
// pyllm/ops/kv_cache.py checked that every slot is below num_blocks * block_size.
#pragma once

#include <cstdint>

#include "common/tensor_view.h"

namespace pyllm {

void write_kv_cache_cpu(const TensorView& k, const TensorView& v, const TensorView& k_cache,
                        const TensorView& v_cache, const TensorView& slot_mapping);
// The same on raw addresses of contiguous tensors (the decode hot path): `row` = Hkv * D
// elements per token; dtype codes as TensorView's (0 f32, 1 f16, 2 bf16).
void write_kv_cache_cpu_ptr(uintptr_t k, uintptr_t v, uintptr_t k_cache, uintptr_t v_cache,
                            uintptr_t slot_mapping, int64_t T, int64_t row, int src_dtype, int cache_dtype);

// Internal: n floats rounded (to nearest even) into f16 (dtype 1) or bf16 (dtype 2) bits, NaN kept
// NaN; one per instruction set, picked through cpu_isa() by the CPU write.
void float_to_half_row_avx2(const float* src, uint16_t* dst, int64_t n, int dtype);
void float_to_half_row_avx512(const float* src, uint16_t* dst, int64_t n, int dtype);

#ifdef PYLLM_WITH_CUDA
void write_kv_cache_cuda(const TensorView& k, const TensorView& v, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& slot_mapping, uintptr_t stream);
#endif

}  // namespace pyllm
