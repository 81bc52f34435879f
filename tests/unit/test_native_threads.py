"""Each worker pool process gets its share of the cores for native (BLAS, OpenMP) threads."""

from __future__ import annotations

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from shared import native_threads


@pytest.mark.parametrize("concurrency, cores, expected", [
    (1, 2, 2), (2, 2, 1), (4, 2, 1), (2, 8, 4), (3, 8, 2), ("auto", 8, 1), (None, 8, 1), (0, 8, 1),
])
def test_each_pool_process_gets_its_share_of_the_cores(concurrency, cores, expected):
    assert native_threads.threads_per_process(concurrency, cores) == expected


def test_an_operators_own_setting_is_left_alone(monkeypatch):
    for name in native_threads.NATIVE_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not native_threads.sized_by_operator()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert native_threads.sized_by_operator()


def test_limiting_sets_the_loaded_pools_and_the_environment_for_later_ones(monkeypatch):
    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    before = threadpool_info()
    assert any(pool["user_api"] == "blas" for pool in before)
    for name in native_threads.NATIVE_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # restored by monkeypatch afterwards
    try:
        native_threads.limit_native_threads(1)
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        assert {name: os.environ[name] for name in native_threads.NATIVE_THREAD_VARIABLES} == {
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finally:
        for pool in before:
            threadpool_limits(limits=pool["num_threads"], user_api=pool["user_api"])
