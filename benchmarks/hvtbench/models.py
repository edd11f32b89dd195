"""The models compared, what their papers report, and how they are built and counted."""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import timm
import timm_hvt  # noqa: F401  (registers hvt_*; the autoload hook would too)
from timm_hvt.flops import count_gmacs, count_params
from timm_hvt.paper import PAPER_BASELINES, PAPER_RESULTS

HVT_MODELS = [f'hvt_ti_{m}' for m in range(5)] + [f'hvt_s_{m}' for m in range(5)]
BASELINES = ['deit_tiny_patch16_224', 'deit_small_patch16_224', 'pit_ti_224', 'pit_xs_224', 'pit_s_224']
ALL_MODELS = HVT_MODELS + BASELINES

# the models swept over image size: the released HVT models and the DeiTs they are compared with in the paper.
# timm's PiT takes no dynamic_img_size, so it is left out of the sweep.
SWEEP_MODELS = ['hvt_ti_1', 'hvt_s_1', 'hvt_s_4', 'deit_tiny_patch16_224', 'deit_small_patch16_224']

# the fused-vs-unfused attention comparison and the torch.compile runs cover these
TARGET_HVT = ['hvt_ti_1', 'hvt_s_1', 'hvt_s_4']
COMPILE_MODELS = ['hvt_ti_1', 'hvt_s_1', 'hvt_s_4', 'deit_tiny_patch16_224', 'deit_small_patch16_224']


class PaperRef(NamedTuple):
    label: str
    gmacs: Optional[float]
    top1: Optional[float]
    source: str


# PiT: Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", ICCV 2021, Table 3 (ImageNet-1k,
# without distillation)
_PIT_PAPER = {
    'pit_ti_224': PaperRef('PiT-Ti', 0.7, 73.0, 'PiT paper'),
    'pit_xs_224': PaperRef('PiT-XS', 1.4, 78.1, 'PiT paper'),
    'pit_s_224': PaperRef('PiT-S', 2.9, 80.9, 'PiT paper'),
}


def paper_ref(name: str) -> PaperRef:
    if name in PAPER_RESULTS:
        r = PAPER_RESULTS[name]
        return PaperRef(r.paper_name, r.gmacs, r.top1, 'HVT paper')
    if name in PAPER_BASELINES:
        r = PAPER_BASELINES[name]
        return PaperRef(r.paper_name, r.gmacs, r.top1, 'HVT paper')
    if name in _PIT_PAPER:
        return _PIT_PAPER[name]
    return PaperRef(name, None, None, '')


def family(name: str) -> str:
    return name.split('_')[0]


def build(name: str, device: torch.device, img_size: Optional[int] = None, dynamic: bool = False,
          fast_init: bool = False) -> nn.Module:
    """timm.create_model(name), with dynamic_img_size for the resolution sweep.

    fast_init (--quick only) builds on the meta device and fills the weights with cheap random values instead of
    the models' own init: the shapes and the computation are the same, only the start-up is quicker.
    """
    kwargs = {}
    if dynamic:
        kwargs['dynamic_img_size'] = True
    elif img_size is not None and img_size != 224:
        kwargs['img_size'] = img_size
    if not fast_init:
        return timm.create_model(name, **kwargs).to(device)
    with torch.device('meta'):
        model = timm.create_model(name, **kwargs)
    model = model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if pname.endswith('weight') else 0.0)
            else:
                p.uniform_(-.03, .03)
        for b in model.buffers():
            b.zero_()
    return model


def gmacs(model: nn.Module, img_size: int) -> float:
    """GMACs per image with timm_hvt's counter (attention matmuls included, as the HVT paper counts)."""
    flags = [p.requires_grad for p in model.parameters()]
    # FlopCounterMode's module tracker trips over PiT's (tokens, cls_tokens) tuples when parameters need grad
    model.requires_grad_(False)
    try:
        return count_gmacs(model, (3, img_size, img_size))
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def params_m(model: nn.Module) -> float:
    return count_params(model) / 1e6


def set_fused_attn(model: nn.Module, fused: bool) -> int:
    """Switch every timm attention module between F.scaled_dot_product_attention and the explicit
    softmax(q @ k^T) @ v path (the authors' math). Returns how many modules were switched."""
    n = 0
    for m in model.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = fused
            n += 1
    return n


def linear_gemm_shapes(batch: int, tokens: Sequence[int], dim: int, mlp_ratio: int = 4) -> List[tuple]:
    """(name, M, K, N) of a ViT block's four linears (qkv, proj, fc1, fc2) at the given token counts."""
    shapes = []
    for n in tokens:
        m = batch * n
        shapes += [
            (f'qkv  {batch}x{n} tok, d{dim}', m, dim, 3 * dim),
            (f'proj {batch}x{n} tok, d{dim}', m, dim, dim),
            (f'fc1  {batch}x{n} tok, d{dim}', m, dim, mlp_ratio * dim),
            (f'fc2  {batch}x{n} tok, d{dim}', m, mlp_ratio * dim, dim),
        ]
    return shapes


def linear_shapes(model: nn.Module, img_size: int, batch: int) -> List[Tuple[int, int, int]]:
    """(M, K, N) of every nn.Linear call in one forward at `batch` images (traced with one image, M scaled)."""
    shapes = []

    def record(module, args):
        x = args[0]
        shapes.append((batch * x[..., 0].numel(), module.in_features, module.out_features))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return shapes
