// The CUDA emulator's self-tests (selftest.cu): the output buffer a named kernel wrote, and the
// launch error it left ("" when none).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace pyllm {
std::pair<std::vector<float>, std::string> cuda_emulator_selftest(const std::string& name);
}
