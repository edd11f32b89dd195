"""The numbers HVT's paper reports (where the weights come from: timm_hvt.sources).

Source: Pan et al., "Scalable Vision Transformers with Hierarchical Pooling", ICCV 2021, arXiv:2103.10619,
Table 1 (ImageNet-1k, 224x224, patch 16, depth 12).
"FLOPs" in the paper count multiply-accumulates, the convention timm reports as GMACs.

Plain data: importing this module imports neither torch nor timm.
"""
from typing import Dict, NamedTuple, Optional

__all__ = ['PaperResult', 'PAPER_RESULTS', 'PAPER_BASELINES', 'ARXIV_ID']

ARXIV_ID = '2103.10619'


class PaperResult(NamedTuple):
    paper_name: str
    gmacs: float
    params_m: float
    top1: float
    top5: Optional[float]


# keyed by this project's architecture name
PAPER_RESULTS: Dict[str, PaperResult] = {
    'hvt_ti_1': PaperResult('HVT-Ti-1', 0.64, 5.74, 69.64, 89.40),
    'hvt_s_0': PaperResult('HVT-S-0', 4.57, 22.05, 80.39, 95.13),
    'hvt_s_1': PaperResult('HVT-S-1', 2.40, 22.09, 78.00, 93.83),
    'hvt_s_2': PaperResult('HVT-S-2', 1.94, 22.11, 77.36, 93.55),
    'hvt_s_3': PaperResult('HVT-S-3', 1.62, 22.11, 76.32, 92.90),
    'hvt_s_4': PaperResult('Scale HVT-Ti-4', 1.39, 22.12, 75.23, 92.30),
}

# the DeiT baselines of the same table, keyed by timm's model name
PAPER_BASELINES: Dict[str, PaperResult] = {
    'deit_tiny_patch16_224': PaperResult('DeiT-Ti', 1.25, 5.72, 72.2, None),
    'deit_small_patch16_224': PaperResult('DeiT-S', 4.60, 22.05, 79.8, None),
}
