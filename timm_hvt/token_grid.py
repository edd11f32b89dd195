""" HVT's pooled tokens spread back onto the patch grid

HVT pools the row-major sequence of patch tokens with kernel k and stride s: token j of a pooled stage covers tokens
s*j .. s*j+k-1 of the stage before it, so after n poolings its windows, composed, cover a run of patches that starts
at patch s^n*j. The grid cell of patch p takes the token

    min(p // s^n, L_n - 1)        (L_n: the stage's token count)

- where windows overlap (k=3, s=2: position 2j lies in windows j-1 and j) the one that starts at the position, the
  later, is taken, at every stage: the token is the last one whose composed windows hold the patch;
- that per-stage choice, min(q // s, L - 1), composes to the closed form, as (L_{n-1} - 1) // s >= L_n - 1;
- patches that the pooling drops at the end of the sequence take the last token, their nearest.
With k < s the windows leave gaps, and a patch in a gap takes the token before it.
"""
from typing import List, Sequence, Union

import torch

__all__ = ['tokens_to_grid', 'spread_tokens', 'stage_token_counts']


def spread_tokens(tokens: torch.Tensor, grid_size: List[int], num_pools: int, stride: int = 2) -> torch.Tensor:
    """(B, N, C) tokens after `num_pools` poolings of stride `stride` as a (B, C, H, W) map on the (H, W) patch grid.

    A gather of whole tokens by the closed-form index above, built by tensor ops from the grid size, so that it
    follows any input size, symbolic ones under torch.compile and torch.export included. The map keeps the tokens'
    channels-last memory layout: a transposed copy would cost more than the gather (`.contiguous()` makes one).
    """
    B, N, C = tokens.shape
    H, W = grid_size[0], grid_size[1]
    if num_pools:
        divisor = 1  # stride ** num_pools, an int under TorchScript too (its int ** int is a float)
        for _ in range(num_pools):
            divisor *= stride
        index = torch.div(torch.arange(H * W, device=tokens.device), divisor, rounding_mode='floor')
        tokens = tokens.index_select(1, index.clamp(max=N - 1))
    return tokens.reshape(B, H, W, C).permute(0, 3, 1, 2)


def stage_token_counts(num_patches: int, kernel_size: int = 3, stride: int = 2) -> List[int]:
    """Token counts of the patch stage and of every pooled stage a sequence of `num_patches` can reach."""
    counts = [num_patches]
    while counts[-1] >= kernel_size:
        pooled = (counts[-1] - kernel_size) // stride + 1
        if pooled == counts[-1]:
            break
        counts.append(pooled)
    return counts


def tokens_to_grid(
        tokens: torch.Tensor,
        grid_size: Union[int, Sequence[int]],
        kernel_size: int = 3,
        stride: int = 2,
        num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """(B, N_s, C) tokens of any HVT stage as a (B, C, H, W) map on the patch grid.

    The stage is told by N_s: the patch stage (H * W tokens) or the pooled stage of N_s tokens. Each grid cell takes
    the value of the token whose pooling windows hold its patch (see the module docstring), so a pooled stage's map
    is piecewise constant along the rows. The reshape transform for Grad-CAM-style tools.

    Args:
        tokens: (B, N_s, C) tokens, e.g. a block's output.
        grid_size: The (H, W) patch grid of the input (`model.patch_embed.grid_size` at the model's image size),
            or H for a square one.
        kernel_size: The model's pool_kernel_size.
        stride: The model's pool_stride.
        num_prefix_tokens: Leading tokens to drop first (1 for a model with a class token).
    """
    H, W = (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
    if tokens.ndim != 3:
        raise ValueError(f'expected (B, N, C) tokens, got shape {tuple(tokens.shape)}')
    tokens = tokens[:, num_prefix_tokens:]
    counts = stage_token_counts(H * W, kernel_size, stride)
    if tokens.shape[1] not in counts:
        after = f' after {num_prefix_tokens} prefix tokens' if num_prefix_tokens else ''
        raise ValueError(
            f'{tokens.shape[1]} tokens{after} fit no stage of a {H}x{W} patch grid (pool kernel {kernel_size}, '
            f'stride {stride}): the stages have {", ".join(map(str, counts))} tokens')
    return spread_tokens(tokens, [H, W], counts.index(tokens.shape[1]), stride)
