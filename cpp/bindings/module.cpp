// The single extension module qfair._core. Each concept binds itself in its own
// file; this one only lists them.
#include <pybind11/pybind11.h>

namespace qfair::py {
void bind_divergence(pybind11::module_& m);
void bind_stats(pybind11::module_& m);
void bind_runtime(pybind11::module_& m);
}  // namespace qfair::py

PYBIND11_MODULE(_core, m) {
    m.doc() = "qfair C++ core: vocabulary-wide divergences and resampling statistics";
    qfair::py::bind_divergence(m);
    qfair::py::bind_stats(m);
    qfair::py::bind_runtime(m);
}
