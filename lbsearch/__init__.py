"""lbsearch: large-batch hyperparameter search for Transformers.

The package is laid out in floors; a package imports only packages on lower floors
(``docs/architecture.md`` in the repository's root, beside this folder: the packages, one line per
module, and a table of where each fact lives, i.e. where to change it; enforced by tests/test_architecture.py):

    cli  >  orchestrator  >  trial, integrations  >  link, tracking, science  >  data, study  >  spec, terminal

``lbsearch.api``, ``lbsearch.hf`` and ``lbsearch.lightning`` are the public paths for your own
training code (docs/your_own_code.md); they name the modules under ``lbsearch.integrations``.
"""
