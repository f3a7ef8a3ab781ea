// The row kernels compiled for avx2 (flags set in CMakeLists.txt). Chosen at
// run time by dispatch.cpp only on CPUs that support it.
#include "kernels.hpp"

#if defined(QFAIR_HAVE_X86_DISPATCH) && defined(__AVX2__)
#define QFAIR_ISA_NS avx2
#define QFAIR_ISA_NAME "avx2"
#include "kernels_impl.inc"

namespace qfair::detail {
const Kernels* kernels_avx2() { return &avx2::kTable; }
}  // namespace qfair::detail
#else
namespace qfair::detail {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace qfair::detail
#endif
