"""The trial's Accelerator: a config file's dynamo settings are kept; ``launcher.compile`` fills in only without them."""

from __future__ import annotations

import pytest

from lbsearch.trial.distributed import make_accelerator


@pytest.fixture(autouse=True)
def _fresh_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


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
