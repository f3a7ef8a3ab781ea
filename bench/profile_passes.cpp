// What one row pair costs in each pass of the divergence core: the first scan
// (max, top-k, target rank), the normaliser (exp, sums, stored e^y) and the
// joint pass (KL both ways, JS, TV), on float16 rows of an LLM-like spread,
// single-threaded, rows cycling through a few that stay in cache. Each pass's
// time is the minimum over the rows (robust to other jobs on a shared machine).
//
//   cmake -S . -B build/prof -G Ninja -DCMAKE_BUILD_TYPE=Release \
//         -DPython_EXECUTABLE=.venv/bin/python -Dpybind11_DIR=$(.venv/bin/python -m pybind11 --cmakedir)
//   cmake --build build/prof --target qfair_core
//   g++ -O2 -std=c++17 -mf16c -Icpp/include bench/profile_passes.cpp build/prof/libqfair_core.a -lpthread \
//       -o /tmp/profile_passes
//   QFAIR_ISA=avx2 /tmp/profile_passes [vocab=49152] [rows=8] [iterations=2000]
//
// NOENT=1 leaves out the entropy's sums, NOJS=1 the JS terms (as
// divergence(metrics=...) does when those columns are not asked for).
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../cpp/src/kernels.hpp"

using namespace qfair;
using namespace qfair::detail;

int main(int argc, char** argv) {
    const int64_t V = argc > 1 ? atoll(argv[1]) : 49152;
    const int rows = argc > 2 ? atoi(argv[2]) : 8;
    const int iterations = argc > 3 ? atoi(argv[3]) : 2000;
    const char* isa = getenv("QFAIR_ISA");
    select_isa(isa ? isa : "avx512");
    const Kernels& k = active_kernels();
    const bool weighted = !getenv("NOENT"), want_js = !getenv("NOJS");
    std::mt19937 g(1);
    std::normal_distribution<float> nd;
    std::vector<uint16_t> P(size_t(rows * V)), Q(size_t(rows * V));
    for (int64_t i = 0; i < rows * V; i++) {
        const float l = nd(g) * 2.5f + ((i % V) < 50 ? 6.f : 0.f);
        P[size_t(i)] = _cvtss_sh(l, 0);
        Q[size_t(i)] = _cvtss_sh(l + nd(g) * 0.15f, 0);
    }
    std::vector<float> ep(size_t(V) + 16), eq(size_t(V) + 16), tv(10);
    std::vector<int64_t> ti(10);
    double t_scan = 1e9, t_norm = 1e9, t_joint = 1e9, sink = 0;
    using clock = std::chrono::steady_clock;
    for (int it = 0; it < iterations; ++it) {
        const uint16_t* p = &P[size_t(it % rows) * size_t(V)];
        const uint16_t* q = &Q[size_t(it % rows) * size_t(V)];
        TopK hp{tv.data(), ti.data(), 10, 0, 0.f}, hq = hp;
        const auto a = clock::now();
        topk_reset(hp);
        const ScanResult sp = k.scan(p, DType::F16, V, 1.0f, &hp);
        topk_reset(hq);
        const ScanResult sq = k.scan(q, DType::F16, V, 1.0f, &hq);
        const auto b = clock::now();
        const SumExp np = k.sum_exp(p, DType::F16, V, sp.max, ep.data(), weighted);
        const SumExp nq = k.sum_exp(q, DType::F16, V, sq.max, eq.data(), weighted);
        const auto c = clock::now();
        JointArgs j;
        j.p = p;
        j.dp = DType::F16;
        j.q = q;
        j.dq = DType::F16;
        j.p_hat = ep.data();
        j.q_hat = eq.data();
        j.n = V;
        const double dc = (sq.max + std::log(nq.total)) - (sp.max + std::log(np.total));
        j.dc_hi = float(dc);
        j.dc_lo = float(dc - double(j.dc_hi));
        j.inv_sp_d = 1 / np.total;
        j.inv_sq_d = 1 / nq.total;
        j.inv_sp = float(j.inv_sp_d);
        j.inv_sq = float(j.inv_sq_d);
        j.want_js = want_js;
        const JointSums js = k.joint(j);
        const auto d = clock::now();
        if (it >= rows) {  // the first round fills the caches
            t_scan = std::min(t_scan, std::chrono::duration<double>(b - a).count());
            t_norm = std::min(t_norm, std::chrono::duration<double>(c - b).count());
            t_joint = std::min(t_joint, std::chrono::duration<double>(d - c).count());
        }
        sink += js.kl_pq + js.tv;
    }
    const double n = double(V);
    std::printf("%s vocab=%ld: scan %.2f  normaliser %.2f  joint %.2f  total %.2f ns per pair = %.3f G pairs/s "
                "per thread (checksum %g)\n",
                k.name, long(V), t_scan / n * 1e9, t_norm / n * 1e9, t_joint / n * 1e9,
                (t_scan + t_norm + t_joint) / n * 1e9, n / (t_scan + t_norm + t_joint) / 1e9, sink);
}
