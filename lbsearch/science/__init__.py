"""Batch-size science on a finished study, torch-free: the scaling fits, the batch-scaling report
(classifiers in samples, language models in tokens) and its figures; the critical batch size over training
from branches (``cbs``, ``cbs_report``)."""

from lbsearch.science.cbs import CONFIDENCE, EPS_SPREADS, N_BOOT, cbs_table, critical_batch, default_eps
from lbsearch.science.cbs_report import CBS_HTML, CBS_JSON, write_cbs_report
from lbsearch.science.report import REPORT_HTML, SUMMARY_JSON, write_report

__all__ = ['REPORT_HTML', 'SUMMARY_JSON', 'CBS_JSON', 'write_report', 'cbs_table', 'critical_batch', 'default_eps', 'N_BOOT', 'CONFIDENCE', 'EPS_SPREADS', 'CBS_HTML', 'write_cbs_report']
