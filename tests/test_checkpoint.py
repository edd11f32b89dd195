"""checkpoint_filter_fn: which checkpoint forms fit, what it resamples, how another variant is reported; and
`model.load_state_dict` keeping torch's own semantics."""
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import reference_hvt
from _weights_helpers import TINY, save_hub_weights
from timm_hvt import CheckpointMismatchError, HierarchicalVisionTransformer, checkpoint_filter_fn
from timm_hvt.hvt import resample_pos_embed_1d


@pytest.fixture(scope='module')
def tiny():
    """A 2-block hvt_ti_1 and random weights for it in the authors' layout."""
    return timm.create_model('hvt_ti_1', **TINY), reference_hvt.random_state_dict('hvt_ti_1', seed=3, **TINY)


def test_filter_accepts_every_checkpoint_form(tiny, tmp_path):
    model, sd = tiny
    forms = {
        'authors': reference_hvt.authors_checkpoint(sd, 'hvt_ti_1', num_blocks=2),
        'bare': dict(sd),
        'ddp': {'model': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 3},
        'own': timm.models.load_state_dict(str(save_hub_weights(tmp_path / 'model.safetensors', sd))),
    }
    for name, checkpoint in forms.items():
        out = checkpoint_filter_fn(checkpoint, model)
        assert out.keys() == model.state_dict().keys(), name
        assert all(torch.equal(out[k], sd[k]) for k in sd), name
    assert all(k.startswith('module.') for k in forms['ddp']['model'])  # the caller's dict is left as it was


def test_filter_resamples_to_the_model_size():
    sd = reference_hvt.random_state_dict('hvt_ti_1', seed=4, **TINY)
    model = timm.create_model('hvt_ti_1', img_size=320, patch_size=20, **TINY)  # a 16x16 grid, 127 pooled tokens
    out = checkpoint_filter_fn(sd, model)
    torch.testing.assert_close(out['pos_embed'], resample_abs_pos_embed(sd['pos_embed'], [16, 16], [14, 14], 0))
    torch.testing.assert_close(out['blocks.0.pos_embed'], resample_pos_embed_1d(sd['blocks.0.pos_embed'], 127))
    assert out['patch_embed.proj.weight'].shape == (192, 3, 20, 20)
    model.load_state_dict(out)  # strict: every key and shape fits


def test_another_variant_is_named():
    with torch.device('meta'):
        model = timm.create_model('hvt_s_1', depth=2)
    ti = reference_hvt.random_state_dict('hvt_ti_1', **TINY)
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint_filter_fn(ti, model)
    message = str(info.value)
    assert 'hvt_s_1' in message and 'embed_dim 192' in message and 'embed_dim 384' in message


def test_other_pooling_stages_are_named():
    with torch.device('meta'):  # shapes are all the check needs
        s2 = timm.create_model('hvt_s_2').state_dict()
        model = timm.create_model('hvt_s_4')
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint_filter_fn(reference_hvt.authors_checkpoint(s2, 'hvt_s_2'), model)
    message = str(info.value)
    assert '[0, 6]' in message and 'hvt_s_2' in message  # what the file holds
    assert '[0, 3, 6, 9]' in message and 'hvt_s_4' in message  # what the model expects
    with torch.device('meta'):  # a schedule no registered variant has: named by its blocks alone
        six_stages = HierarchicalVisionTransformer(embed_dim=384, num_heads=6, pool_block_width=2).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r'\[0, 2, 4, 6, 8, 10\]'):
        checkpoint_filter_fn(six_stages, model)


def test_not_an_hvt_checkpoint(tiny):
    model, _ = tiny
    deit = timm.create_model('deit_tiny_patch16_224', depth=2).state_dict()
    with pytest.raises(CheckpointMismatchError, match='class_token True'):
        checkpoint_filter_fn(deit, model)


def test_load_state_dict_keeps_torchs_semantics(tiny):
    # no resampling, no hooks: a checkpoint of another resolution fails as it does for any torch module
    model, _ = tiny
    other = timm.create_model('hvt_ti_1', img_size=288, **TINY).state_dict()
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(other)
    assert 'pos_embed' in str(info.value)
    result = model.load_state_dict({k: v for k, v in model.state_dict().items() if k != 'head.bias'}, strict=False)
    assert result.missing_keys == ['head.bias'] and not result.unexpected_keys
    vit = timm.create_model('vit_tiny_patch16_224', depth=2)
    hooks = ('_load_state_dict_pre_hooks', '_load_state_dict_post_hooks', '_state_dict_hooks',
             '_state_dict_pre_hooks', '_forward_pre_hooks', '_forward_hooks')
    for name in hooks:
        assert sum(len(getattr(m, name)) for m in model.modules()) <= \
               sum(len(getattr(m, name)) for m in vit.modules()), name
