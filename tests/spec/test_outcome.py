"""One classification of how training ends, shared by the built-in loop and the API."""

import math

import torch

from lbsearch.integrations import api
from lbsearch.spec import INTERRUPTED, diverged, failure, is_out_of_memory
from lbsearch.trial import readings, worker


def test_divergence_is_a_non_finite_value_or_a_loss_above_the_factor():
    assert not diverged(2.0, first_loss=1.0, factor=3.0)
    assert diverged(3.5, first_loss=1.0, factor=3.0)
    assert diverged(math.nan, first_loss=1.0, factor=3.0)
    assert diverged(math.inf, first_loss=1.0, factor=3.0)
    assert diverged(1.0, first_loss=1.0, factor=3.0, finite=False)  # a non-finite gradient norm


def test_out_of_memory_by_type_or_by_message():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried... out of memory"))
    assert not is_out_of_memory(ValueError("shapes do not match"))
    assert not is_out_of_memory(None)


def test_failure_reasons():
    assert failure(KeyboardInterrupt()).reason == INTERRUPTED
    oom = failure(torch.OutOfMemoryError("out of memory"))
    assert (oom.reason, oom.oom, oom.state) == ("out of memory", True, "failed")
    assert failure(ValueError("bad shape\nmore lines")).reason == "ValueError: bad shape"
    assert failure(None, "the script exited with code 3").reason == "the script exited with code 3"


def test_the_loop_and_the_api_use_the_one_classification():
    assert readings.diverged is diverged and worker.failure is failure
    assert api.diverged is diverged and api.failure is failure
