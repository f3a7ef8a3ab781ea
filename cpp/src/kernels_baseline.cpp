// The row kernels compiled for the baseline of the target (SSE2 on x86-64):
// the fallback on every CPU.
#define QFAIR_ISA_NS baseline
#define QFAIR_ISA_NAME "baseline"
#include "kernels_impl.inc"

namespace qfair::detail {
const Kernels& kernels_baseline() { return baseline::kTable; }
}  // namespace qfair::detail
