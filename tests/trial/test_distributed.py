"""The trial's Accelerator: a config file's dynamo settings are kept; ``launcher.compile`` fills in only without them."""

from __future__ import annotations

import os

import pytest

from lbsearch.trial.distributed import make_accelerator

pytestmark = pytest.mark.usefixtures("fresh_accelerator")


def test_compile_without_a_file_is_regional_inductor(monkeypatch):
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    plugin = make_accelerator("no", True, compile=True).state.dynamo_plugin
    assert plugin.backend.value == "INDUCTOR" and plugin.use_regional_compilation


def test_a_files_dynamo_is_not_overridden(monkeypatch):
    # what `accelerate launch` exports from a config file's dynamo_config
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "false")
    plugin = make_accelerator("no", True, compile=True).state.dynamo_plugin
    assert plugin.backend.value == "EAGER" and not plugin.use_regional_compilation


def test_fsdp1_on_cpu_is_refused_with_what_to_change(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(RuntimeError, match="set `fsdp_version: 2`"):
        make_accelerator("no", True, compile=False)


def test_a_compiled_trial_keeps_its_compiled_code_under_the_cache_for_the_next(monkeypatch, tmp_path):
    """``launcher.compile``: inductor's caches go under the run's cache folder (the next trial of the same
    model loads what this one compiled), unless ``TORCHINDUCTOR_CACHE_DIR`` is set; without compiling, nothing changes."""
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # recorded, so the test leaves the variable as it found it
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    make_accelerator("no", True, compile=False, cache=tmp_path)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    make_accelerator("no", True, compile=True, cache=tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    make_accelerator("no", True, compile=True, cache=tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"
