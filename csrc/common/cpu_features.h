// Which vector instruction set the CPU kernels use, chosen once at run time.
// The extension is compiled for baseline x86-64; *_avx2.cpp and *_avx512.cpp files hold the
// wider paths, and callers pick one through cpu_isa(). PYLLM_CPU_ISA=baseline|avx2|avx512 caps
// the choice (a request above what the CPU supports is lowered to what it has).
#pragma once

#include <string>

namespace pyllm {

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

Isa detected_isa();          // what the CPU supports
Isa cpu_isa();               // what the kernels use now
void set_cpu_isa(Isa isa);   // capped at detected_isa()
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);

}  // namespace pyllm
