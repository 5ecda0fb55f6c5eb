"""The orchestrator, torch-free: ask -> tracked trial -> tell (the study loop), the tracked trial
(MLflow run, process, retries), launching a trial's processes, the standby client, other
machines' ranks (``lbsearch join``), script trials, the end of a study, branching a trial from its checkpoints (``lbsearch branch``), and ``run --parallel``'s placement of workers."""

from lbsearch.orchestrator.branch import BranchArgs, run_branches
from lbsearch.orchestrator.finish import report
from lbsearch.orchestrator.launch import TRIAL_LOG
from lbsearch.orchestrator.loop import run_study
from lbsearch.orchestrator.nodes import join
from lbsearch.orchestrator.parallel import run_parallel, without_option
from lbsearch.orchestrator.ray_executor import RAY_INSTALL, require_ray
from lbsearch.orchestrator.runner import CONFIG_JSON, LABELS_JSON, REPRODUCE_SH, VERSIONS_JSON, TrialRun, resolved, run_tracked, trial_files
from lbsearch.orchestrator.teacher import Teacher, find_teacher

__all__ = ['BranchArgs', 'run_branches', 'run_study', 'TrialRun', 'resolved', 'run_tracked', 'trial_files', 'join', 'report', 'run_parallel', 'without_option', 'require_ray', 'RAY_INSTALL', 'TRIAL_LOG', 'CONFIG_JSON', 'REPRODUCE_SH', 'VERSIONS_JSON', 'LABELS_JSON', 'Teacher', 'find_teacher']
