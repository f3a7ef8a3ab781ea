// The ways the core runs work on several threads, and the one rule for how
// many threads a call gets: parallel_for (fixed blocks) and
// parallel_for_dynamic (chunks handed out as threads free up; below).
//
// parallel_for splits [0, n) into `threads` static contiguous blocks, block w
// being [n*w/T, n*(w+1)/T): which items a block holds depends only on n and T,
// and every caller writes each item's result to its own slot (or reduces per
// block in block order), so results are bitwise identical at any thread count.
// Block 0 runs on the calling thread; all workers are joined before it
// returns, and the exception of the lowest-numbered block that threw (if any)
// is rethrown then. If a thread cannot be started, its blocks run on the
// calling thread instead. (In the spirit of hnswlib's ParallelFor.)
//
// Not for the per-ISA kernel translation units (kernels_<isa>.cpp): an inline
// function or template instantiated there could be merged by the linker into
// a wide-ISA copy. The kernels never start threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace qfair {

// Threads for a call over `items` work items:
//   requested < 0  -> std::invalid_argument
//   requested == 0 -> the CPUs this process may run on (sched affinity where
//                     the OS has it, else std::thread::hardware_concurrency)
//   requested > 0  -> that many, capped at max_threads()
// then capped so that each thread gets at least `grain` items (at least 1).
int resolve_threads(int requested, int64_t items = INT64_MAX, int64_t grain = 1);

// The CPUs this process may run on (>= 1).
int available_cpus();

// The most threads a call ever starts: 8 per available CPU, at most 1024 (a
// larger request cannot run faster and could exhaust the process's threads).
int max_threads();

// fn(begin, end, worker) for worker = 0 .. T-1 over the static blocks of
// [0, n), T = min(threads, n) (at least 1). See above for the guarantees.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
    if (n <= 0) return;
    const int t = static_cast<int>(threads < 1 ? 1 : (threads > n ? n : threads));
    auto block = [n, t](int w) {
        return std::pair<int64_t, int64_t>{n * w / t, n * (w + 1) / t};
    };
    if (t == 1) {
        fn(int64_t{0}, n, 0);
        return;
    }
    std::vector<std::exception_ptr> errors(static_cast<size_t>(t));
    auto run = [&](int w) noexcept {
        try {
            const auto [b, e] = block(w);
            fn(b, e, w);
        } catch (...) {
            errors[static_cast<size_t>(w)] = std::current_exception();
        }
    };
    std::vector<std::thread> workers;
    int started = 1;  // blocks 1 .. started-1 run on their own threads
    try {
        workers.reserve(static_cast<size_t>(t - 1));
        for (; started < t; ++started) workers.emplace_back(run, started);
    } catch (...) {
        // Out of threads (or memory): the remaining blocks run here.
    }
    run(0);
    for (int w = started; w < t; ++w) run(w);
    for (auto& th : workers) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// A chunk size for parallel_for_dynamic: about eight chunks a thread, at most
// `cap` items each (at least 1).
inline int64_t dynamic_chunk(int64_t n, int threads, int64_t cap) {
    return std::max<int64_t>(1, std::min<int64_t>(cap, n / (8 * int64_t(std::max(threads, 1)))));
}

// Runs work(worker, next) on T = min(threads, chunks) workers (at least 1);
// next(begin, end) hands the worker the next chunk of `chunk` items of [0, n)
// from a shared counter, in order, and returns false when none is left. A
// worker slowed by other jobs on its CPU takes fewer chunks instead of holding
// the call up, and keeps its scratch across its chunks. Which worker runs an
// item varies from call to call, so only for work whose every item writes its
// own slot, or whose per-worker totals do not depend on how the items were
// split (integer counts); then the results are bitwise identical at any thread
// count, as with parallel_for.
template <class Work>
void parallel_for_dynamic(int64_t n, int threads, int64_t chunk, Work&& work) {
    if (n <= 0) return;
    chunk = std::max<int64_t>(chunk, 1);
    const int64_t chunks = (n + chunk - 1) / chunk;
    const int t = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, chunks)));
    std::atomic<int64_t> counter{0};
    parallel_for(t, t, [&](int64_t, int64_t, int worker) {
        auto next = [&](int64_t& begin, int64_t& end) {
            const int64_t c = counter.fetch_add(1, std::memory_order_relaxed);
            if (c >= chunks) return false;
            begin = c * chunk;
            end = std::min(n, begin + chunk);
            return true;
        };
        work(worker, next);
    });
}

}  // namespace qfair
