"""The authors' HVT computation (tests/reference_hvt.py) as timm models, for timm's own scripts.

Importing this module registers `authors_hvt_ti_1`, `authors_hvt_s_0`, `authors_hvt_s_1`, ..., `authors_hvt_s_4`
with timm's model registry, so that timm's benchmark.py (or anything that calls `timm.create_model`) runs the
authors' arithmetic — matmul + softmax attention, `x @ W.t() + b` linears, token pooling with `unfold(...).amax` —
in the same harness as timm-hvt's models. The weights are random, in the authors' layout (the same draw
benchmarks/bench_hvt.py uses); speed does not depend on them. Nothing of timm is changed: the names are added
through timm's public `register_model`, in the process that imports this module only.

    python -c 'import runpy, sys; sys.path.insert(0, "benchmarks"); import authors_models; \\
        sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")' \\
        benchmark.py --model authors_hvt_s_4 --amp --amp-dtype bfloat16
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn
from timm.models import register_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
import reference_hvt  # noqa: E402

__all__ = ['AuthorsHVT', 'NAMES']

_forward = reference_hvt.forward.__wrapped__  # the reference forward without its no_grad: trainable here


class AuthorsHVT(nn.Module):
    """The authors' forward over a state dict in their layout, the state dict held as this module's parameters."""

    def __init__(self, arch: str, num_classes: int = 1000, img_size: int = 224, in_chans: int = 3, seed: int = 0):
        super().__init__()
        sd = reference_hvt.random_state_dict(arch, seed=seed, img_size=img_size, in_chans=in_chans,
                                             num_classes=num_classes)
        self.keys = list(sd)
        self.weights = nn.ParameterList([nn.Parameter(v) for v in sd.values()])
        self.num_classes = num_classes
        # what timm's resolve_data_config reads: the same preprocessing as the hvt_* models
        self.pretrained_cfg = dict(
            architecture=f'authors_{arch}', input_size=(in_chans, img_size, img_size), crop_pct=0.875,
            interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(dict(zip(self.keys, self.weights)), x)


def _create(arch, pretrained=False, num_classes=1000, img_size=224, in_chans=3, **kwargs):
    # timm's scripts pass their generic options (drop rates, global_pool, scriptable, ...) to every model: the
    # authors' forward has no dropout and a fixed mean pooling, so they are accepted and have no effect
    if pretrained:
        raise ValueError(f'{arch}_authors has random weights only')
    return AuthorsHVT(arch, num_classes=num_classes, img_size=img_size, in_chans=in_chans)


def _register(arch):
    def entry(pretrained=False, **kwargs):
        return _create(arch, pretrained=pretrained, **kwargs)
    entry.__name__ = entry.__qualname__ = f'authors_{arch}'
    entry.__doc__ = f"The authors' {arch} computation (tests/reference_hvt.py), random weights."
    entry.__module__ = __name__
    return register_model(entry)


NAMES = [f'authors_{arch}' for arch in reference_hvt.VARIANTS]
for _arch in reference_hvt.VARIANTS:
    globals()[f'authors_{_arch}'] = _register(_arch)
