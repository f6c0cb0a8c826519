"""The leaderboard report: ``write_report(results_dir, out_dir)`` turns a results directory into
leaderboard.md, a self-contained leaderboard.html and figures/*.png."""

from influence_bench.report.render import ReportError, write_report

__all__ = ["ReportError", "write_report"]
