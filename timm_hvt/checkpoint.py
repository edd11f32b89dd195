"""Adapting state dicts (the authors' files, bare state dicts, this project's own) to an HVT model."""
from typing import Any, Dict

import torch

from timm.layers import resample_abs_pos_embed, resample_patch_embed

__all__ = ['unwrap_state_dict', 'adapt_state_dict']


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The state dict inside a training-script checkpoint ('model', 'state_dict', ...), without 'module.' prefixes."""
    for key in ('model', 'state_dict', 'model_ema', 'state_dict_ema'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {(k[7:] if k.startswith('module.') else k): v for k, v in checkpoint.items()}


def adapt_state_dict(
        checkpoint: Dict[str, Any],
        model: torch.nn.Module,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Resample position embeddings and the patch kernel of `checkpoint` to `model`'s image and patch size."""
    from .hvt import resample_pos_embed_1d
    state_dict = unwrap_state_dict(checkpoint)
    out = {}
    for k, v in state_dict.items():
        if k == 'patch_embed.proj.weight':
            kernel = model.patch_embed.proj.weight.shape[-2:]
            if v.shape[-2:] != kernel:
                v = resample_patch_embed(v, list(kernel), interpolation=interpolation, antialias=antialias)
        elif k == 'pos_embed':
            grid = model.patch_embed.grid_size
            if v.shape[1] != grid[0] * grid[1]:
                v = resample_abs_pos_embed(
                    v, new_size=grid, num_prefix_tokens=0, interpolation=interpolation, antialias=antialias)
        elif k.startswith('blocks.') and k.endswith('.pos_embed'):
            target = model.state_dict().get(k)
            if target is not None and v.shape[1] != target.shape[1]:
                v = resample_pos_embed_1d(v, target.shape[1])
        out[k] = v
    return out
