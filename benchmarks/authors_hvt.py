"""The authors' HVT computation, written from the paper's description independently of timm_hvt and of timm: plain
tensor ops over a state dict in the authors' layout. The tests hold timm-hvt's models to it; the benchmarks time it.

  patches (conv p x p, stride p) -> + pos_embed -> 12 pre-norm blocks; after every block that owns a
  `blocks.{i}.pos_embed`, max-pool the tokens 1D (kernel 3, stride 2) and add that embedding -> LayerNorm ->
  mean over tokens -> linear head. Attention heads are 64 channels wide.
"""
import argparse
import math
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

LN_EPS = 1e-6
HEAD_DIM = 64


def _layer_norm(x: torch.Tensor, sd: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], eps=LN_EPS)


def _linear(x: torch.Tensor, sd: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ sd[f'{name}.weight'].t() + sd[f'{name}.bias']


def _attention(x: torch.Tensor, sd: Dict[str, torch.Tensor], name: str, num_heads: int) -> torch.Tensor:
    batch, tokens, dim = x.shape
    head_dim = dim // num_heads
    qkv = _linear(x, sd, f'{name}.qkv').view(batch, tokens, 3, num_heads, head_dim)
    q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # each (B, heads, N, head_dim)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return _linear(out, sd, f'{name}.proj')


def _mlp(x: torch.Tensor, sd: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return _linear(F.gelu(_linear(x, sd, f'{name}.fc1')), sd, f'{name}.fc2')


def _max_pool_tokens(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    # windows over the token axis, max per channel
    return x.unfold(1, kernel, stride).amax(dim=-1)


def depth_of(sd: Dict[str, torch.Tensor]) -> int:
    return 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))


@torch.no_grad()
def forward(sd: Dict[str, torch.Tensor], images: torch.Tensor, num_heads: int = 0) -> torch.Tensor:
    """Logits of the HVT described by the authors'-layout state dict `sd` for `images` (B, C, H, W)."""
    kernel = sd['patch_embed.proj.weight']
    dim, patch = kernel.shape[0], kernel.shape[-1]
    num_heads = num_heads or dim // HEAD_DIM
    x = F.conv2d(images, kernel, sd['patch_embed.proj.bias'], stride=patch)
    x = x.flatten(2).transpose(1, 2) + sd['pos_embed']
    for i in range(depth_of(sd)):
        blk = f'blocks.{i}'
        x = x + _attention(_layer_norm(x, sd, f'{blk}.norm1'), sd, f'{blk}.attn', num_heads)
        x = x + _mlp(_layer_norm(x, sd, f'{blk}.norm2'), sd, f'{blk}.mlp')
        if f'{blk}.pos_embed' in sd:
            x = _max_pool_tokens(x) + sd[f'{blk}.pos_embed']
    x = _layer_norm(x, sd, 'norm').mean(dim=1)
    return _linear(x, sd, 'head')


def pooled_lengths(num_tokens: int, stages: int) -> List[int]:
    lengths = []
    for _ in range(stages):
        num_tokens = (num_tokens - 3) // 2 + 1
        lengths.append(num_tokens)
    return lengths


# the released variants, per the paper's table: (embed dim, blocks followed by a pooling)
VARIANTS = {
    'hvt_ti_1': (192, (0,)),
    'hvt_s_0': (384, ()),
    'hvt_s_1': (384, (0,)),
    'hvt_s_2': (384, (0, 6)),
    'hvt_s_3': (384, (0, 4, 8)),
    'hvt_s_4': (384, (0, 3, 6, 9)),
}


def random_state_dict(
        arch: str,
        seed: int = 0,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        depth: int = 12,
) -> Dict[str, torch.Tensor]:
    """A random state dict in the authors' layout for one of VARIANTS, scaled so logits are O(1)."""
    dim, pooled = VARIANTS[arch]
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.05, mean: float = 0.) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    num_tokens = (img_size // patch_size) ** 2
    lengths = dict(zip(pooled, pooled_lengths(num_tokens, len(pooled))))
    sd = {
        'pos_embed': rand(1, num_tokens, dim, std=0.1),
        'patch_embed.proj.weight': rand(dim, in_chans, patch_size, patch_size, std=0.05),
        'patch_embed.proj.bias': rand(dim, std=0.1),
    }
    for i in range(depth):
        blk = f'blocks.{i}'
        sd.update({
            f'{blk}.norm1.weight': rand(dim, std=0.1, mean=1.), f'{blk}.norm1.bias': rand(dim, std=0.1),
            f'{blk}.attn.qkv.weight': rand(3 * dim, dim, std=0.08), f'{blk}.attn.qkv.bias': rand(3 * dim, std=0.05),
            f'{blk}.attn.proj.weight': rand(dim, dim, std=0.04), f'{blk}.attn.proj.bias': rand(dim, std=0.02),
            f'{blk}.norm2.weight': rand(dim, std=0.1, mean=1.), f'{blk}.norm2.bias': rand(dim, std=0.1),
            f'{blk}.mlp.fc1.weight': rand(4 * dim, dim, std=0.05), f'{blk}.mlp.fc1.bias': rand(4 * dim, std=0.02),
            f'{blk}.mlp.fc2.weight': rand(dim, 4 * dim, std=0.02), f'{blk}.mlp.fc2.bias': rand(dim, std=0.02),
        })
        if i in lengths:
            sd[f'{blk}.pos_embed'] = rand(1, lengths[i], dim, std=0.1)
    sd.update({
        'norm.weight': rand(dim, std=0.1, mean=1.), 'norm.bias': rand(dim, std=0.1),
        'head.weight': rand(num_classes, dim, std=0.05), 'head.bias': rand(num_classes, std=0.1),
    })
    return sd


def authors_checkpoint(sd: Dict[str, torch.Tensor], arch: str, **args) -> Dict:
    """`sd` wrapped like the authors' training script saves it (model, optimizer, ..., args Namespace)."""
    dim, pooled = VARIANTS[arch]
    width = {(): None, (0,): 12, (0, 6): 6, (0, 4, 8): 4, (0, 3, 6, 9): 3}[pooled]
    namespace = argparse.Namespace(**{
        'model': 'hvt_model', 'input_size': 224, 'patch_size': 16, 'num_heads': dim // HEAD_DIM,
        'head_dim': HEAD_DIM, 'num_blocks': 12, 'pool_kernel_size': 3, 'pool_stride': 2,
        'pool_block_width': width, 'lr': 5e-4, 'weight_decay': 0.025, 'output_dir': 'output', **args})
    return {'model': sd, 'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5, 'params': [0, 1]}]},
            'lr_scheduler': {'t_initial': 300}, 'epoch': 299, 'scaler': {'scale': 65536.0}, 'args': namespace}


class AuthorsHVT(nn.Module):
    """The authors' forward as a timm model (`authors_hvt_ti_1`, ...), the state dict held as its parameters."""

    def __init__(self, arch: str, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3, seed: int = 0):
        super().__init__()
        sd = random_state_dict(arch, seed=seed, img_size=img_size, in_chans=in_chans, num_classes=num_classes)
        self.keys = list(sd)
        self.weights = nn.ParameterList([nn.Parameter(v) for v in sd.values()])
        self.num_classes = num_classes
        # what timm's resolve_data_config reads: the same preprocessing as the hvt_* models
        self.pretrained_cfg = dict(
            architecture=f'authors_{arch}', input_size=(in_chans, img_size, img_size), crop_pct=0.875,
            interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward.__wrapped__(dict(zip(self.keys, self.weights)), x)


def _register(arch: str):
    # timm's scripts pass their generic options (drop rates, global_pool, scriptable, ...) to every model: the
    # authors' forward has no dropout and a fixed mean pooling, so they are accepted and have no effect
    def entry(pretrained=False, num_classes=1000, img_size=224, in_chans=3, **kwargs):
        if pretrained:
            raise ValueError(f'authors_{arch} has random weights only')
        return AuthorsHVT(arch, num_classes=num_classes, img_size=img_size, in_chans=in_chans)
    entry.__name__ = entry.__qualname__ = f'authors_{arch}'
    entry.__doc__ = f"The authors' {arch} computation, random weights."
    entry.__module__ = __name__
    return register_model(entry)


for _arch in VARIANTS:
    globals()[f'authors_{_arch}'] = _register(_arch)
