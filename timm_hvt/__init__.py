"""HVT (Pan et al., "Scalable Vision Transformers with Hierarchical Pooling", ICCV 2021) as timm models.

Importing this package registers the `hvt_*` models with timm's registry; nothing else of timm changes.
"""
from .errors import CheckpointMismatchError, PretrainedWeightsUnavailable
from .hvt import HierarchicalVisionTransformer, checkpoint_filter_fn
from .token_grid import tokens_to_grid

__version__ = '0.2.0'
__all__ = [
    'HierarchicalVisionTransformer', 'checkpoint_filter_fn', 'CheckpointMismatchError', 'PretrainedWeightsUnavailable',
    'tokens_to_grid', '__version__',
]
