"""Subnormal floats kept out of the update: flush-to-zero on the calling thread, scoped to one update.

Why: a ReLU unit that is dead on the demonstrations gets no data gradient, only J_L2's 2·λ3·θ on its
incoming and outgoing weights. Once that gradient is far below Adam's ε, Adam's step is about
lr·2·λ3·θ/ε = 0.2·θ (paper defaults): those weights shrink geometrically (a damped oscillation, with
momentum) until the gradient 2·λ3·θ and Adam's first moment are subnormal (below
``torch.finfo(torch.float32).tiny``, 1.2e-38), then the weights themselves, and they stay there: the
step that would take them to 0 underflows. Pretraining on a small log kills units steadily, so the
number of subnormal entries grows (about 12,000 of 96,000 after 20,000 updates on the quickstart's log,
``benchmarks/results/pretrain_rate.md``). Every operation that reads or writes a subnormal takes a slow
path on CPUs that handle them with microcode assists (most Intel cores), so the update slows down as
pretraining runs. With flush-to-zero (FTZ) and denormals-are-zero (DAZ) on, an underflowing result is 0:
a dead unit's weights stop where Adam's step underflows (around 1e-30, far from anything that matters)
and nothing else changes (only values below 1.2e-38 are affected).

Why scoped, and how: the FTZ/DAZ bits (MXCSR on x86) belong to each thread, ``torch.set_flush_denormal``
sets the calling thread's without a way to read them back, and threads started later copy the mode of
the thread that starts them. :func:`flush_denormals` turns flushing on for one update only when it was
off, and off again afterwards, so the library leaves its caller's mode as it found it, on the updating
thread (the service's trainer thread) and on every other (the serving threads). Intra-op worker threads
are the two subtleties: (1) they are started by OpenMP at a thread's first parallel region and would copy
the mode if that happened inside the scope, so the scope first makes sure they exist
(:func:`_start_worker_threads`); (2) their own mode stays off, so with ``torch.get_num_threads() > 1``
their share of an update can still create subnormals, and the agent then also zeroes the subnormal
entries of the weights, the gradient and Adam's state at the end of each update, on the calling thread
(:func:`flush_subnormal_values`, about 50 µs for a 2×256 network). With one intra-op thread (the
service's and the benchmarks' setting) the scope alone covers everything. See docs/algorithm.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

TINY = torch.finfo(torch.float32).tiny
"""The smallest normal float32; nonzero values of smaller magnitude are subnormal."""

SINGLE_THREAD_CHUNK = 32_768
"""PyTorch's grain size (``at::internal::GRAIN_SIZE``): an elementwise operation on fewer elements runs on
the calling thread, not on the intra-op worker threads."""

_thread = threading.local()


def flush_denormal_enabled() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal float32 results to zero.

    ``torch.set_flush_denormal`` has no getter, so this computes TINY/2 (subnormal) and looks: 0 means
    flush-to-zero is on. A fresh tensor each call, so concurrent threads do not share a buffer.
    """
    return torch.tensor([TINY]).mul_(0.5).item() == 0.0


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush subnormals to zero on this thread inside the block; the previous mode is restored after.

    Does nothing when ``enabled`` is False, when flushing is already on (the caller's setting is kept),
    or where this CPU cannot flush (``torch.set_flush_denormal`` returns False).
    """
    if not enabled or flush_denormal_enabled():
        yield
        return
    _start_worker_threads()
    if not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def flush_subnormal_values(tensors: list[torch.Tensor]) -> None:
    """Set the subnormal entries of float32 CPU tensors to zero, in place, on this thread.

    Call it with flushing on (inside :func:`flush_denormals`): each tensor is multiplied by 1 in pieces
    small enough to run on the calling thread, whose denormals-are-zero mode reads a subnormal as 0 and
    leaves every other value as it was (NaN and ±∞ included).
    """
    pieces = [piece for t in tensors for piece in t.view(-1).split(SINGLE_THREAD_CHUNK)]
    if pieces:
        torch._foreach_mul_(pieces, 1.0)


def count_subnormal(tensor: torch.Tensor) -> int:
    """Subnormal entries of a float32 tensor (a diagnostic for tests and benchmarks).

    Read from the bits (exponent 0, mantissa not 0), so the answer does not depend on whether this
    thread treats subnormal inputs as zero (DAZ), as a comparison with ``TINY`` would.
    """
    if tensor.dtype != torch.float32:
        raise TypeError("count_subnormal takes float32 tensors")
    bits = tensor.detach().contiguous().view(torch.int32)
    return int(((bits & 0x7F800000) == 0).logical_and_((bits & 0x007FFFFF) != 0).sum())


def _start_worker_threads() -> None:
    """Have this thread's intra-op worker threads exist before flushing is turned on.

    A worker thread copies the floating-point mode of the thread that starts it and keeps it. OpenMP
    starts a thread's workers at its first parallel region with that many threads; if that region were
    inside :func:`flush_denormals`, the workers would flush for good, a setting the caller never made. So
    the first time a thread enters the scope with n > 1 intra-op threads, one operation large enough for
    n threads runs before flushing goes on.
    """
    threads = torch.get_num_threads()
    if threads > getattr(_thread, "workers_started", 1):
        torch.ones(SINGLE_THREAD_CHUNK * threads).mul_(2.0)  # one parallel region with every thread
        _thread.workers_started = threads
