"""torch.compile of an HVT classifier with inductor and fullgraph=True: a training forward and backward give eager's
logits and gradients. Every block's map is compiled in test_hvt_model.py: each in a file of its own, so that the two
test workers build their kernels at the same time (the C++ build takes about a minute on a cold cache)."""
import pytest
import torch

from timm_hvt.hvt import HierarchicalVisionTransformer

from _helpers import assert_compiled_step_matches_eager

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


@pytest.mark.smoke  # torch.compile at the dependency floors too (test_training.py compiles through timm's task)
def test_torch_compile_fullgraph_logits_match_eager():
    """A 2-block HVT without a class token (token mean), each block pooled."""
    torch.manual_seed(0)
    model = HierarchicalVisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2,
                                          num_pool_stages=2, num_classes=7)
    assert_compiled_step_matches_eager(model, lambda m: m,
                                       torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
