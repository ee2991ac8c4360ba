// The CPU kernels' thread count (OpenMP underneath). Set from Python with
// pyllm._C.set_num_threads; defaults to OpenMP's default (the number of cores).
#pragma once

namespace pyllm {
void set_num_threads(int n);
int get_num_threads();
}  // namespace pyllm
