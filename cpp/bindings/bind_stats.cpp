// Bindings for the resampling statistics (qfair/stats.hpp). Owned by the analyze work.
#include <pybind11/pybind11.h>

namespace qfair::py {
void bind_stats(pybind11::module_& /*m*/) {}
}  // namespace qfair::py
