"""Every training test runs offline with its module's own Hugging Face home; the tiny FLUX pipeline folder and a
fresh accelerate state on request."""

import pytest

from tests.support.training import tiny_pipeline_dir


@pytest.fixture(scope="module", autouse=True)
def _offline_module(offline) -> None:
    """Applies the test-wide `offline` fixture to each training module."""


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a run with another mixed precision needs a fresh one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """The tiny AsukaFluxPipeline saved once per module (a module may define its own)."""
    return tiny_pipeline_dir(tmp_path_factory, "flux")
