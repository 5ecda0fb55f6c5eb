"""MLflow: the tracker, what a study looks like in the UI (its description, datasets, the best
trial's tag, plots), and the kept and registered models. The only package that imports MLflow."""

from lbsearch.tracking.kept import keep_train_model, keep_trial_model, models_dir, trial_model_dir
from lbsearch.tracking.story import KIND, dataset_inputs, description, mark_best, study_plots
from lbsearch.tracking.tracker import Tracker, TrackingError, experiment_links, flatten, git_commit, tracker_for, versions

__all__ = ['Tracker', 'TrackingError', 'experiment_links', 'flatten', 'git_commit', 'tracker_for', 'versions', 'KIND', 'dataset_inputs', 'description', 'mark_best', 'study_plots', 'keep_train_model', 'keep_trial_model', 'models_dir', 'trial_model_dir']
