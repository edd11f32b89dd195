"""HVT (Pan et al., "Scalable Vision Transformers with Hierarchical Pooling", ICCV 2021) as timm models.

Importing this package registers the `hvt_*` models with timm's registry.
"""
from .hvt import HierarchicalVisionTransformer, checkpoint_filter_fn

__version__ = '0.1.0'
__all__ = ['HierarchicalVisionTransformer', 'checkpoint_filter_fn', '__version__']
