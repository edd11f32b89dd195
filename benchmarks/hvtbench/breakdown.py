"""Where a model's inference time goes: torch.profiler self time per op, grouped, next to the MACs of each group.

This is what the GEMM-rate targets are judged against: a transformer's time is its linear layers' GEMMs plus
everything that is not a GEMM (attention, norms, activations, residual adds, copies), and only the former can run
at the machine's GEMM rate.
"""
import os
import sys
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Dict, List

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from timm_hvt.flops import _flop_mapping

# profiler op name -> category; anything else is 'other'
CATEGORIES = [
    ('linear GEMMs (addmm / mm)', ('aten::addmm', 'aten::mm', 'mkl::_mkl_linear', 'mkldnn::')),
    ('attention (SDPA / bmm + softmax)', ('aten::_scaled_dot_product', 'aten::bmm', 'aten::_softmax',
                                          'aten::baddbmm')),
    ('patch-embed conv', ('aten::mkldnn_convolution', 'aten::convolution', 'aten::_convolution')),
    ('GELU', ('aten::gelu',)),
    ('LayerNorm', ('aten::native_layer_norm',)),
    ('residual / position adds, scale', ('aten::add', 'aten::mul')),
    ('copies (mostly addmm writing the bias into its output)',
     ('aten::copy_', 'aten::clone', 'aten::cat', 'aten::contiguous')),
    ('token pooling, final mean', ('aten::max_pool', 'aten::avg_pool', 'aten::adaptive', 'aten::mean')),
]
# FLOP-counter op -> category of the MACs
_MAC_OPS = {
    'addmm': 0, 'mm': 0,
    'bmm': 1, 'baddbmm': 1, '_scaled_dot_product': 1,
    'convolution': 2,
}


@contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs its start and stop straight to fd 2, through any progress bar."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _category(name: str) -> str:
    for label, prefixes in CATEGORIES:
        if any(name.startswith(p) for p in prefixes):
            return label
    return 'other'


def _macs_by_category(model: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        model(x)
    out: Dict[str, float] = defaultdict(float)
    for op, flops in counter.get_flop_counts().get('Global', {}).items():
        name = getattr(op, '__name__', str(op).split('.')[-1])
        for key, idx in _MAC_OPS.items():
            if name.startswith(key):
                out[CATEGORIES[idx][0]] += flops / 2
                break
    return out


def time_breakdown(model: nn.Module, x: torch.Tensor, iters: int = 2, amp=nullcontext) -> List[dict]:
    """Self CPU time per category per batch (ms), its share, its MACs and achieved GFLOP/s."""
    model.eval()
    with torch.inference_mode(), amp():
        macs = _macs_by_category(model, x)
        model(x)  # warm
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(x)
    per: Dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        per[_category(evt.key)] += evt.self_cpu_time_total / 1e3 / iters  # ms per batch
    total = sum(per.values())
    rows = []
    for label in [c[0] for c in CATEGORIES] + ['other']:
        ms = per.get(label, 0.0)
        mac = macs.get(label, 0.0)
        rows.append(dict(category=label, ms_per_batch=ms, share=ms / total if total else float('nan'),
                         gmacs_per_batch=mac / 1e9, gflops=(2 * mac / (ms / 1e3) / 1e9) if ms > 0 and mac else None))
    rows.append(dict(category='total', ms_per_batch=total, share=1.0, gmacs_per_batch=sum(macs.values()) / 1e9,
                     gflops=2 * sum(macs.values()) / (total / 1e3) / 1e9 if total else None))
    return rows
