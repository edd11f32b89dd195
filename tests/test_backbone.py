"""HVT as a backbone: every block's features as a map on the patch grid (`forward_intermediates`' NCHW,
`features_only`, `tokens_to_grid`), checked against a brute-force composition of the pooling windows, then read by
the tools that take ViT features: segmentation-models-pytorch's DPT, open_clip's timm image tower and
pytorch-grad-cam's Grad-CAM. Random weights everywhere, nothing is downloaded.

Needs the `test` extra (segmentation-models-pytorch, open-clip-torch, grad-cam); without it these tests fail.
"""
import warnings
from typing import List

import numpy as np
import open_clip
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from timm_hvt import tokens_to_grid

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def _brute_force_index(num_patches: int, kernel_size: int, stride: int) -> List[List[int]]:
    """For each stage (the patches, then each pooling), the token each patch is mapped to: the last token whose
    pooling windows, composed across the stages, hold the patch; the last token for a patch no window holds."""
    covers = [{p} for p in range(num_patches)]  # the patches under each token
    stages = [list(range(num_patches))]
    while len(covers) >= kernel_size:
        covers = [set().union(*covers[j * stride:j * stride + kernel_size])
                  for j in range((len(covers) - kernel_size) // stride + 1)]
        index = []
        for p in range(num_patches):
            holding = [j for j, cover in enumerate(covers) if p in cover]
            if not holding:  # dropped by a pooling: only ever past the end of the last window
                assert p > max(covers[-1])
            index.append(holding[-1] if holding else len(covers) - 1)
        stages.append(index)
    return stages


@pytest.mark.parametrize('kernel_size,stride', [(3, 2), (2, 2), (4, 3)])
@pytest.mark.parametrize('grid', [(6, 6), (14, 14), (5, 7), (3, 11)])
def test_tokens_to_grid_is_the_composition_of_the_pooling_windows(grid, kernel_size, stride):
    for index in _brute_force_index(grid[0] * grid[1], kernel_size, stride):
        tokens = torch.arange(max(index) + 1, dtype=torch.float).view(1, -1, 1)  # each token's value: its index
        found = tokens_to_grid(tokens, grid, kernel_size=kernel_size, stride=stride)
        assert found.shape == (1, 1, *grid)
        assert found.flatten().long().tolist() == index


def test_tokens_to_grid_takes_prefix_tokens_and_refuses_a_count_that_fits_no_stage():
    tokens = torch.randn(2, 1 + 97, 8)
    maps = tokens_to_grid(tokens, 14, num_prefix_tokens=1)  # 196 patches, pooled once
    torch.testing.assert_close(maps, tokens_to_grid(tokens[:, 1:], (14, 14)))
    with pytest.raises(ValueError, match=r'(?s)\b50\b.*196, 97, 48, 23, 11'):
        tokens_to_grid(torch.randn(1, 50, 8), (14, 14))


def _spread(tokens: torch.Tensor, grid, num_pools: int) -> torch.Tensor:
    index = torch.tensor(_brute_force_index(grid[0] * grid[1], 3, 2)[num_pools])
    return tokens[:, index].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


# (variant, model kwargs, input size): square, non-square with a class token (at a size it was not built for),
# and without pooling
MODEL_CASES = {
    'square': ('hvt_ti_2', dict(img_size=96, depth=4), (96, 96)),
    'non_square_cls': ('hvt_ti_4', dict(img_size=96, depth=4, dynamic_img_size=True, class_token=True), (80, 112)),
    'no_pooling': ('hvt_ti_0', dict(img_size=64, depth=2), (64, 64)),
}


@pytest.mark.parametrize('case', list(MODEL_CASES))
def test_forward_intermediates_maps_are_the_tokens_on_the_patch_grid(case):
    name, kwargs, size = MODEL_CASES[case]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **kwargs).eval()
    x = torch.randn(2, 3, *size)
    grid = (size[0] // 16, size[1] // 16)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)  # NCHW by default
        _, tokens = model.forward_intermediates(x, output_fmt='NLC')
        pairs = model.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
        out_indices = (0, len(model.blocks) - 1)
        features = timm.create_model(name, features_only=True, out_indices=out_indices, **kwargs).eval()
        assert not features.model.load_state_dict(model.state_dict(), strict=False).missing_keys
        feature_maps = features(x)
    torch.testing.assert_close(final, model.forward_features(x))
    pools = [sum(p <= i for p in model.pool_blocks) for i in range(len(model.blocks))]
    for m, t, n in zip(maps, tokens, pools):
        assert m.shape == (2, model.embed_dim, *grid) and m.is_contiguous(memory_format=torch.channels_last)
        assert t.shape[1] == len(set(_brute_force_index(grid[0] * grid[1], 3, 2)[n]))  # prefix tokens left out
        torch.testing.assert_close(m, _spread(t, grid, n), rtol=0, atol=0)
    if model.has_class_token:
        for (m, prefix), ref in zip(pairs, maps):
            torch.testing.assert_close(m, ref)
            assert prefix.shape == (2, 1, model.embed_dim)
    assert features.feature_info.reduction() == [16, 16]
    for m, ref in zip(feature_maps, (maps[0], maps[-1])):
        torch.testing.assert_close(m, ref)


@pytest.mark.parametrize('encoder,readout,kwargs', [
    ('tu-hvt_s_4', 'ignore', {}),
    ('tu-hvt_ti_1', 'cat', dict(class_token=True)),  # the class token read out by the decoder
])
def test_smp_dpt_segments_at_any_size_and_trains(encoder, readout, kwargs):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # smp's notes on the encoder's prefix tokens
        model = smp.DPT(
            encoder_name=encoder, encoder_weights=None, classes=3, decoder_readout=readout,
            decoder_intermediate_channels=(16, 16, 16, 16), decoder_fusion_channels=16,
            embed_dim=64, num_heads=2, dynamic_img_size=True, **kwargs)  # a narrow encoder, all 12 blocks
    assert model.encoder.output_strides == [16] * 4
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3, 224, 224)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(2, 3, 160, 224), torch.randint(0, 3, (2, 160, 224))
    masks = model(x)
    assert masks.shape == (2, 3, 160, 224)
    torch.nn.functional.cross_entropy(masks, target).backward()
    grad = model.encoder.model.patch_embed.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    before = model.encoder.model.pos_embed.detach().clone()
    optimizer.step()
    assert not torch.equal(model.encoder.model.pos_embed, before)


@pytest.mark.parametrize('decoder', [smp.Unet, smp.FPN])
def test_smp_pyramid_decoders_refuse_hvt_as_they_refuse_deit(decoder):
    # their `tu-` encoders take features at strides 4/8/16/32; a plain ViT's are all at its patch size
    for encoder in ('tu-deit_tiny_patch16_224', 'tu-hvt_ti_1'):
        with pytest.raises(ValueError):
            decoder(encoder_name=encoder, encoder_weights=None, classes=2)


def test_open_clip_hvt_tower_forward_intermediates():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(timm_model_name='hvt_ti_1', timm_model_pretrained=False, image_size=224),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model.forward_intermediates(image=x)
        tokens = model.visual.trunk.forward_intermediates(x, output_fmt='NLC', intermediates_only=True)
        embedding = model.encode_image(x, normalize=True)
    assert len(out['image_intermediates']) == 12
    for m, t in zip(out['image_intermediates'], tokens):
        assert m.shape == (1, 192, 14, 14)
        torch.testing.assert_close(m, tokens_to_grid(t, (14, 14)))
    torch.testing.assert_close(out['image_features'], embedding)


def test_grad_cam_on_the_last_block():
    torch.manual_seed(0)
    model = timm.create_model('hvt_ti_1', num_classes=5, img_size=(96, 128)).eval()  # a 6x8 grid, 48 -> 23 tokens
    grid = model.patch_embed.grid_size
    cam = GradCAM(model, target_layers=[model.blocks[-1]], reshape_transform=lambda t: tokens_to_grid(t, grid))
    heat = cam(input_tensor=torch.randn(2, 3, 96, 128), targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert heat.shape == (2, 96, 128)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert all(np.ptp(h) > 0 for h in heat)  # a heat map, not a constant
