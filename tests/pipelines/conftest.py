"""The contract tests' fixtures: each case of `tests.support.pipeline_contract.CASES` and its tiny pipeline, built
once per module (a module that defines its own `pipe` uses that one)."""

import pytest

from tests.support.pipeline_contract import CASES, Case, make_pipe


@pytest.fixture(scope="module", params=CASES, ids=str)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def pipe(case):
    return make_pipe(case)
