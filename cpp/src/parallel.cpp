// The thread-count rule shared by every parallel call of the core.
#include "qfair/parallel.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#endif

namespace qfair {

int available_cpus() {
#if defined(__linux__)
    // The affinity mask is what taskset, cgroup cpusets and job schedulers
    // restrict; hardware_concurrency reports the whole machine.
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned h = std::thread::hardware_concurrency();
    return h == 0 ? 1 : static_cast<int>(h);
}

int max_threads() { return std::min(1024, 8 * available_cpus()); }

int resolve_threads(int requested, int64_t items, int64_t grain) {
    if (requested < 0)
        throw std::invalid_argument("threads must be >= 0 (0: one per available CPU), got " +
                                    std::to_string(requested));
    int t = requested == 0 ? available_cpus() : std::min(requested, max_threads());
    if (grain < 1) grain = 1;
    const int64_t useful = std::max<int64_t>(1, items / grain + (items % grain != 0));
    if (t > useful) t = static_cast<int>(useful);
    return std::max(t, 1);
}

}  // namespace qfair
