"""Counting a model's multiply-accumulates the way the HVT paper does, attention's two matmuls included.

torch's FlopCounterMode has no formula for the fused attention kernel PyTorch runs on the CPU, so a model using
`F.scaled_dot_product_attention` would be under-counted there; the formula is added here for that kernel.
"""
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ['count_gmacs', 'count_params']

_aten = torch.ops.aten
_CPU_SDPA_OPS = [
    getattr(_aten, name) for name in (
        '_scaled_dot_product_flash_attention_for_cpu',
        '_scaled_dot_product_fused_attention_overrideable',
    ) if hasattr(_aten, name)
]


def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode hands custom formulas the shapes of tensor arguments
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_mapping():
    return {op: _sdpa_forward_flops for op in _CPU_SDPA_OPS}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> float:
    """Multiply-accumulates (in billions) of one forward pass per image, as the paper's "FLOPs" count them:
    convolutions, linear layers and both attention matmuls; norms, activations, softmax and pooling excluded."""
    param = next(model.parameters())
    x = torch.randn((batch_size, *input_size), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / batch_size / 1e9
