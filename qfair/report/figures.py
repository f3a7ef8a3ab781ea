"""The report's figures, drawn with matplotlib's Agg backend from the analysis tables.

Each ``fig_*`` function returns a list of :class:`Figure` (a file name, a
matplotlib figure, a title and a caption); ``make_figures`` draws those of
every section of the report (:mod:`qfair.report.sections`) and saves PNGs.
The functions live with their section (:mod:`.calibration`, :mod:`.tokens`,
:mod:`.strata`, :mod:`.accuracy`, :mod:`.groups`, :mod:`.bias`,
:mod:`.families`, :mod:`.generation`); this module keeps their names. Every figure labels its axes with units, says in its title what is
compared, and has a legend. Every interval drawn here is read from the
analysis tables (bootstrap intervals of the summary, groups and strata
tables; Wilson intervals of the calibration bins and flip rates); the only
statistic computed here is the Wilson interval of a plain accuracy level.
Figures about correct answers (reliability, accuracy, flips) show only the
tasks whose kind has gold answers.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qfair.report.accuracy import accuracy_view, fig_accuracy, fig_flips, flip_table
from qfair.report.bias import bias_figures as fig_bias
from qfair.report.calibration import fig_reliability
from qfair.report.common import BASE_COLOR, Figure, _plt, _safe, model_colors  # noqa: F401 - re-exported
from qfair.report.data import AnalysisData
from qfair.report.families import family_figures as fig_families
from qfair.report.generation import generation_figures as fig_generation
from qfair.report.groups import _METRIC_AXIS, fig_groups, group_view  # noqa: F401 - re-exported
from qfair.report.lookup import _conf_level, _pct, _summary_value, _task_kind, gold_tasks, range_label  # noqa: F401
from qfair.report.sections import report_sections
from qfair.report.strata import (  # noqa: F401 - re-exported
    SCATTER_POINTS,
    STRATA_SHIFT,
    TEST_SHIFTS,
    TOKEN_TEST_SHIFTS,
    fig_strata,
    fig_uncertainty_tests,
    strata_view,
    uncertainty_view,
)
from qfair.report.tokens import CDF_POINTS, KL_FLOOR, KL_PERCENTILES, fig_token_kl, kl_percentiles  # noqa: F401

__all__ = ["Figure", "make_figures", "KL_PERCENTILES", "kl_percentiles", "FIGURE_FUNCS", "model_colors",
           "accuracy_view", "strata_view", "flip_table", "group_view", "range_label", "gold_tasks",
           "uncertainty_view"]

DPI = 110

#: every built-in figure function, in the order the report draws them
FIGURE_FUNCS: tuple[Callable[[AnalysisData], list[Figure]], ...] = (
    fig_reliability, fig_token_kl, fig_strata, fig_uncertainty_tests, fig_accuracy, fig_flips, fig_groups,
    fig_bias, fig_families, fig_generation)


def make_figures(data: AnalysisData, out_dir: str | Path, progress: bool = False) -> list[Figure]:
    """Draw every figure the data supports and save it as ``out_dir/<name>.png``:
    the figures of each section of the report, the dump kind's own last."""
    from tqdm.auto import tqdm

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = report_sections(data)
    own = [s for s in sections if s.present is not None]
    funcs = [fn for s in sections if s not in own for fn in s.figures] + [fn for s in own for fn in s.figures]
    figs: list[Figure] = []
    for fn in tqdm(funcs, desc="qfair report", unit="figure", disable=not progress, dynamic_ncols=True):
        for f in fn(data):
            f.path = out / f"{f.name}.png"
            f.fig.savefig(f.path, dpi=DPI)
            plt.close(f.fig)
            figs.append(f)
    return figs
