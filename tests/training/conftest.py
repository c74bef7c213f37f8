"""Every training test runs offline with its module's own Hugging Face home; accelerate's state on request."""

import pytest


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
