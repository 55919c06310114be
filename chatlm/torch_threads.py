"""Which threads run torch on several cores: the scheduler's alone.

torch's CPU kernels parallelise with OpenMP, and OpenMP gives every thread that calls a parallel
kernel its own team of worker threads, kept until that thread exits. Once the teams together hold
more threads than the machine has cores, libgomp stops spinning between kernels and every one of
the hundreds of kernels in a decoding step waits for its workers to wake up: measured on 2 cores,
a step took twice as long once the main thread had loaded the model with two threads. So a serving
process loads and prepares on one thread, other threads (request handlers embedding a question)
run torch on one thread, and the scheduler thread takes all the cores.
"""

from __future__ import annotations

import threading
from functools import cache


@cache
def machine_threads() -> int:
    """torch's own choice of intra-op threads for this machine, read before any limiting."""
    import torch

    return max(1, torch.get_num_threads())


def use_all_cores() -> None:
    """For the scheduler thread: all of torch's threads."""
    import torch

    torch.set_num_threads(machine_threads())


def one_thread_here() -> None:
    """For the calling thread only (OpenMP keeps the setting per thread): torch on one core."""
    import torch

    machine_threads()
    torch.set_num_threads(1)


def one_thread_off_main() -> None:
    """One thread for torch in any thread but the main one (request handlers, helpers)."""
    if threading.current_thread() is not threading.main_thread():
        one_thread_here()
