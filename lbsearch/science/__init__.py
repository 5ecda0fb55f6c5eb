"""Batch-size science on a finished study, torch-free: the scaling fits, the batch-scaling report
(classifiers in samples, language models in tokens) and its figures."""

from lbsearch.science.report import REPORT_HTML, write_report

__all__ = ['REPORT_HTML', 'write_report']
