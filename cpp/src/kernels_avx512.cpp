// The row kernels compiled for avx512 (flags set in CMakeLists.txt). Chosen at
// run time by dispatch.cpp only on CPUs that support it.
#include "kernels.hpp"

#if defined(QFAIR_HAVE_X86_DISPATCH) && defined(__AVX512F__)
#define QFAIR_ISA_NS avx512
#define QFAIR_ISA_NAME "avx512"
#include "kernels_impl.inc"

namespace qfair::detail {
const Kernels* kernels_avx512() { return &avx512::kTable; }
}  // namespace qfair::detail
#else
namespace qfair::detail {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace qfair::detail
#endif
