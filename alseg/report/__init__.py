"""Reporting: read run directories, compare strategies (learning curves, AUC, penalty matrix), write the report."""

from alseg.report.build import build_report

__all__ = ["build_report"]
