// What the core runs with: the vector kernel the dispatcher chose and the
// thread-count rule (qfair/divergence.hpp, qfair/parallel.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "qfair/divergence.hpp"
#include "qfair/parallel.hpp"

namespace py = pybind11;

namespace qfair::py {

void bind_runtime(::py::module_& m) {
    m.def("active_isa", &active_isa, "The vector instruction set the kernels run with.");
    m.def("available_isas", &available_isas,
          "The instruction sets this build has and this CPU runs, widest first.");
    m.def("select_isa", [](const std::string& cap) { return std::string(select_isa(cap.c_str())); },
          ::py::arg("cap"), "Cap the kernel's instruction set ('avx512', 'avx2', 'baseline'); returns the one chosen.");
    m.def("kernel_exp",
          [](const ::py::array_t<float, ::py::array::c_style | ::py::array::forcecast>& x) {
              ::py::array_t<float> out(x.size());
              kernel_exp(x.data(), out.mutable_data(), static_cast<int64_t>(x.size()));
              return out;
          },
          ::py::arg("x"),
          "e^x (x <= 0, -inf and NaN included) as the active vector kernel computes it inside the passes, "
          "as a flat float32 array: for the accuracy tests.");
    m.def("resolve_threads", [](int threads) { return resolve_threads(threads); }, ::py::arg("threads") = 0,
          "Threads a call given `threads` starts when it has enough work (0: one per available CPU; "
          "large requests are capped; negative raises ValueError).");
}

}  // namespace qfair::py
