"""Leaderboard: results store → per-task tables (Markdown, CSV, LaTeX, static HTML) and plots.

Built from the results store alone, one table per task layout (:mod:`brainharness.layout`, declared by
each task); see :mod:`brainharness.leaderboard.build` for the rules (missing cells stay missing,
random-init weights and reference rows are never ranked, no silent duplicate rows).
"""
from .tables import (build_tables, leaderboard_records, render_all_markdown, render_html, render_latex,
                     render_markdown, to_csv, write_leaderboard)

__all__ = ["build_tables", "leaderboard_records", "render_all_markdown", "render_html", "render_latex",
           "render_markdown", "to_csv", "write_leaderboard"]
