#include <pybind11/pybind11.h>

namespace qfair::py {
void bind_divergence(pybind11::module_& /*m*/) {}
}  // namespace qfair::py
