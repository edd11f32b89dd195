"""Fixtures shared by the test files that build, train or export models."""
import os

import pytest
import torch

if os.environ.get('PYTEST_XDIST_WORKER'):  # .ci/run runs two workers on two cores: one intra-op thread each
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread. The models these tests train or export are tiny: a second thread gains
    little, and OpenMP threads that wait on a busy core slow everything down many times over on a shared 2-core
    machine. Results must not depend on this (the suite also passes with OMP_NUM_THREADS=1 or many threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
