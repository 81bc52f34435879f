"""Native thread pools (OpenBLAS under numpy and scipy, OpenMP under implicit and scikit-learn) sized to a share.

Each of these libraries starts one thread per core in every process. Where several processes share the
cores (a Celery worker's pool), they compete for the same cores and spin while they wait, so each process
is given its share instead (services/pipeline/worker.py). An operator's own OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS or MKL_NUM_THREADS is left as it is.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_process(concurrency, cores: int) -> int:
    """Native threads each of `concurrency` processes may start, so that together they use each core once."""
    if not isinstance(concurrency, int) or concurrency < 1:
        return 1  # "auto" or autoscaling: as many processes as cores, at most
    return max(1, cores // concurrency)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it, else the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sized_by_operator() -> bool:
    """True when the environment already sets a native thread count (then it is not changed)."""
    return any(name in os.environ for name in NATIVE_THREAD_VARIABLES)


def limit_native_threads(threads: int) -> None:
    """This process's native thread pools to `threads`: the libraries loaded already, and those loaded later."""
    for name in NATIVE_THREAD_VARIABLES:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)
