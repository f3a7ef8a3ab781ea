// Helpers shared by the stats_*.cpp files (not part of the public header).
#pragma once

#include <cstdint>
#include <vector>

#include "qfair/stats.hpp"

namespace qfair::stats::detail {

int width_bin(double c, int bins);
void mass_edges_from_sorted(const double* sorted, int64_t n, int bins, std::vector<double>* edges);
// Calibration measure from per-bin count, sum of confidence and sum of correctness.
double measure_from_bins(const double* cnt, const double* sconf, const double* sacc, int nb,
                         double total, CalMeasure m);

}  // namespace qfair::stats::detail
