#include "common/threads.h"

#include <omp.h>

#include <stdexcept>

namespace pyllm {

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("number of threads must be >= 1");
  omp_set_num_threads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

}  // namespace pyllm
