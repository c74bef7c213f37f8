"""benchmarks/training_budget.py: its training steps train what the scripts train, and the budget arithmetic."""

import pytest
import torch
from benchmark_modules import training_budget

from asuka.testing.sd import make_tiny_sd_components


@pytest.mark.parametrize("name", ["aligner", "decoder"])
def test_steps_update_only_the_trained_component(name):
    components = make_tiny_sd_components(0)
    for key, module in components.items():
        if key != "scheduler":
            module.eval().requires_grad_(False)
    before = {k: {n: p.clone() for n, p in m.state_dict().items()} for k, m in components.items() if k != "scheduler"}
    training_budget.RUNS[name](components, 32, 2, "cpu", torch.float32)()
    changed = {
        key
        for key, state in before.items()
        if any(not torch.equal(v, components[key].state_dict()[n]) for n, v in state.items())
    }
    assert changed == {name}


def test_budget_table_arithmetic():
    table = training_budget.budget_table({"aligner": 1e12, "decoder": 2e12}, tflops=100.0)
    # aligner: 20,000 x 8 samples x 1 TFLOP at 100 TFLOP/s = 1600 s = 0.44 h; decoder: 50,000 x 40 x 2 TFLOP = 11.1 h
    assert "| aligner | 20,000 steps x batch 8 | 1.00 | 160 | 0.4 | 0.1 h |" in table
    assert "| decoder | 50,000 steps x batch 40 | 2.00 | 4,000 | 11.1 | 1.4 h |" in table
