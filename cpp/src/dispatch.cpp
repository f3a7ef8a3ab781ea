// Runtime choice of the widest row kernel this CPU runs.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels.hpp"

#if defined(QFAIR_HAVE_X86_DISPATCH)
#include <cpuid.h>
#endif

namespace qfair::detail {
namespace {

enum Level { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

Level parse_cap(const char* name) {
    if (name == nullptr || *name == '\0') return kAvx512;
    if (std::strcmp(name, "baseline") == 0) return kBaseline;
    if (std::strcmp(name, "avx2") == 0) return kAvx2;
    return kAvx512;
}

#if defined(QFAIR_HAVE_X86_DISPATCH)
bool has_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c & (1u << 29)) != 0;
}
#endif

const Kernels* choose(Level cap) {
#if defined(QFAIR_HAVE_X86_DISPATCH)
    __builtin_cpu_init();
    if (cap >= kAvx512 && kernels_avx512() != nullptr && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("bmi2"))
        return kernels_avx512();
    if (cap >= kAvx2 && kernels_avx2() != nullptr && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && has_f16c())
        return kernels_avx2();
#else
    (void)cap;
#endif
    return &kernels_baseline();
}

std::atomic<const Kernels*> g_chosen{nullptr};

}  // namespace

const Kernels& active_kernels() {
    const Kernels* k = g_chosen.load(std::memory_order_acquire);
    if (k == nullptr) {
        k = choose(parse_cap(std::getenv("QFAIR_ISA")));
        g_chosen.store(k, std::memory_order_release);
    }
    return *k;
}

}  // namespace qfair::detail

namespace qfair {
const char* active_isa() { return detail::active_kernels().name; }

std::vector<std::string> available_isas() {
    std::vector<std::string> out;
    for (detail::Level cap : {detail::kAvx512, detail::kAvx2, detail::kBaseline}) {
        const std::string name = detail::choose(cap)->name;
        if (out.empty() || out.back() != name) out.push_back(name);
    }
    return out;
}

void kernel_exp(const float* x, float* out, int64_t n) { detail::active_kernels().exp_f32(x, out, n); }

const char* select_isa(const char* cap) {
    const detail::Kernels* k = detail::choose(detail::parse_cap(cap));
    detail::g_chosen.store(k, std::memory_order_release);
    return k->name;
}
}  // namespace qfair
