"""Timing, GEMM-rate and memory measurement.

Every comparison is made inside one *group*: a list of configurations timed round-robin, one sample of each per
round, the starting point rotating from round to round, so that whatever else the machine is doing at a given
moment falls on all of them alike. A configuration's figure is the median of its samples.
"""
import math
import statistics
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ['DTYPES', 'Case', 'LiveTensorBytes', 'gemm_cases', 'run_group', 'synchronize']


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'xpu':
        torch.xpu.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


@dataclass
class Case:
    """One thing to time. `step()` does `work` units (images, or FLOPs for a GEMM) per call."""
    meta: Dict[str, object]  # what the case is (model, task, dtype, ...): becomes the row of the results
    step: Callable[[], None]
    work: float
    device: torch.device
    prepare: Optional[Callable[[], None]] = None  # run untimed before every call (mode switches, flags)
    prime: Optional[Callable[[], None]] = None  # run once before the warm-up (e.g. creates optimizer state)
    track_memory: Optional[Callable[[], Iterable[torch.Tensor]]] = None  # tensors alive before the step
    inner: int = 1  # calls per sample, set from the warm-up so that short steps are timed over several calls
    samples: List[float] = field(default_factory=list)  # seconds per call
    first_call_s: float = float('nan')  # the first call (for torch.compile: compilation included)
    warmup_s: float = float('nan')
    peak_bytes: Optional[int] = None
    error: Optional[str] = None

    def rate(self, stat: Callable[[List[float]], float] = statistics.median) -> float:
        """Work per second, from the median (or another statistic) of the samples."""
        if not self.samples:
            return float('nan')
        return self.work / stat(self.samples)

    @property
    def rate_min(self) -> float:
        return self.work / max(self.samples) if self.samples else float('nan')

    @property
    def rate_max(self) -> float:
        return self.work / min(self.samples) if self.samples else float('nan')


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive while the mode is active, on top of the storages that existed before.

    Every storage an op hands back is counted once, from its first appearance until it is freed (the storage's
    Python object lives exactly as long as the storage). Storages known beforehand (`existing`: parameters,
    buffers, inputs, earlier gradients and optimizer state) are counted in the baseline, never twice. Workspace
    a kernel allocates and frees internally is not seen.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._live: Dict[int, int] = {}
        self.baseline = 0
        for t in existing:
            st = t.untyped_storage()
            if st.data_ptr() and st.data_ptr() not in self._live:
                self._live[st.data_ptr()] = 0  # known, weighs in the baseline only
                self.baseline += st.nbytes()
        self.current = 0
        self.peak = 0

    def _freed(self, ptr: int) -> None:
        self.current -= self._live.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in ((out,) if isinstance(out, torch.Tensor) else tree_flatten(out)[0]):
            if isinstance(t, torch.Tensor) and t._base is None:  # a view shares a storage already seen
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr and ptr not in self._live:
                    self._live[ptr] = st.nbytes()
                    self.current += st.nbytes()
                    if self.current > self.peak:
                        self.peak = self.current
                    weakref.finalize(st, self._freed, ptr)
        return out

    @property
    def peak_total(self) -> int:
        return self.baseline + self.peak


def _call(case: Case) -> float:
    if case.prepare is not None:
        case.prepare()
    synchronize(case.device)
    t0 = time.perf_counter()
    for _ in range(case.inner):
        case.step()
    synchronize(case.device)
    return (time.perf_counter() - t0) / case.inner


def _tracked_call(case: Case) -> float:
    """One call under the memory tracker; sets case.peak_bytes."""
    if case.prepare is not None:
        case.prepare()
    with LiveTensorBytes(case.track_memory()) as mem:
        t0 = time.perf_counter()
        case.step()
        synchronize(case.device)
        elapsed = time.perf_counter() - t0
    case.peak_bytes = mem.peak_total
    return elapsed


def _fail(case: Case, e: Exception) -> None:
    case.error = f'{type(e).__name__}: {e}'.splitlines()[0][:200]


def run_group(
        cases: Sequence[Case],
        rounds: int,
        warmup: int = 1,
        min_sample_s: float = 0.0,
        progress: Optional[Callable[[Case], None]] = None,
) -> None:
    """Warm every case up, then time `rounds` interleaved rounds. The memory tracker runs in the last warm-up
    call; with warmup=0 (--quick) in the first round's call, whose time then counts as a sample. A case that
    raises is marked with its error and left out of later rounds."""
    for case in cases:
        try:
            if case.prime is not None:
                case.prime()
            for i in range(warmup):
                if i == warmup - 1 and case.track_memory is not None:
                    case.warmup_s = _tracked_call(case)
                else:
                    case.warmup_s = _call(case)
                if i == 0:
                    case.first_call_s = case.warmup_s
            if warmup and min_sample_s > 0 and case.warmup_s > 0:
                case.inner = max(1, math.ceil(min_sample_s / case.warmup_s))
        except Exception as e:  # keep the rest of the run alive; the row reports the error
            _fail(case, e)
        if progress is not None and warmup:
            progress(case)
    for r in range(rounds):
        live = [c for c in cases if c.error is None]
        if not live:
            break
        shift = r % len(live)
        for case in live[shift:] + live[:shift]:
            try:
                if not warmup and not case.samples and case.track_memory is not None:
                    t = _tracked_call(case)
                else:
                    t = _call(case)
                if not case.samples and not warmup:
                    case.first_call_s = t
                case.samples.append(t)
            except Exception as e:
                _fail(case, e)
            if progress is not None:
                progress(case)


DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def gemm_cases(
        shapes: Sequence[Tuple[str, int, int, int]],
        dtype: str,
        device: torch.device,
        group: str,
) -> List[Case]:
    """One case per (name, M, K, N): `x @ w.t()` with x (M, K) and w (N, K), the layout of an nn.Linear without
    its bias, timed with torch.matmul. Work is counted in FLOPs (2*M*K*N)."""
    cases = []
    gen = torch.Generator().manual_seed(0)
    for name, m, k, n in shapes:
        x = torch.randn(m, k, generator=gen).to(device=device, dtype=DTYPES[dtype])
        w = torch.randn(n, k, generator=gen).to(device=device, dtype=DTYPES[dtype])

        def step(x=x, w=w):
            torch.matmul(x, w.t())

        meta = dict(group=group, kind='gemm', shape=name, M=m, K=k, N=n, dtype=dtype)
        cases.append(Case(meta=meta, step=step, work=2.0 * m * k * n, device=device))
    return cases
