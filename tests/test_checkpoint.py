"""checkpoint_filter_fn and the load_state_dict hook: which checkpoint forms fit, and how misfits are reported."""
import argparse
import logging

import pytest
import timm
import torch

import reference_hvt
from _weights_helpers import TINY, save_hub_weights
from timm_hvt import HierarchicalVisionTransformer, checkpoint_filter_fn
from timm_hvt.checkpoint import CheckpointMismatchError, layout_of, read_checkpoint


@pytest.fixture(scope='module')
def tiny():
    """A 2-block hvt_ti_1 and random weights for it in the authors' layout."""
    return timm.create_model('hvt_ti_1', **TINY), reference_hvt.random_state_dict('hvt_ti_1', seed=3, **TINY)


def _forms(sd, tmp_path):
    """The same weights as the authors' training script, a bare dict, a DDP-wrapped dict and this project's file."""
    hub_file = save_hub_weights(tmp_path / 'model.safetensors', sd)
    return {
        'authors': reference_hvt.authors_checkpoint(sd, 'hvt_ti_1', num_blocks=2),
        'bare': dict(sd),
        'ddp': {'model': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 3},
        'timm_train': {'state_dict': dict(sd), 'arch': 'hvt_ti_1', 'args': argparse.Namespace(model='hvt_ti_1')},
        'own': read_checkpoint(hub_file),
    }


def test_filter_accepts_every_checkpoint_form(tiny, tmp_path):
    model, sd = tiny
    for name, checkpoint in _forms(sd, tmp_path).items():
        out = checkpoint_filter_fn(checkpoint, model)
        assert out.keys() == model.state_dict().keys(), name
        assert all(torch.equal(out[k], sd[k]) for k in sd), name


def test_another_variant_is_named_with_offending_keys():
    with torch.device('meta'):
        model = timm.create_model('hvt_s_1', depth=2)
    ti = reference_hvt.random_state_dict('hvt_ti_1', **TINY)
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint_filter_fn(ti, model)
    message = str(info.value)
    assert 'embed_dim 192 in the checkpoint vs 384 in the model' in message
    assert 'pos_embed (1, 196, 192) vs (1, 196, 384)' in message
    assert 'size mismatch' not in message


def test_other_pooling_stages_are_named():
    with torch.device('meta'):  # shapes are all the check needs
        s2 = timm.create_model('hvt_s_2').state_dict()
        model = timm.create_model('hvt_s_1')
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint_filter_fn(reference_hvt.authors_checkpoint(s2, 'hvt_s_2'), model)
    message = str(info.value)
    assert '(like hvt_s_2)' in message
    assert 'pool_blocks (0, 6) in the checkpoint vs (0,) in the model' in message
    assert 'blocks.6.pos_embed unexpected' in message
    # the same file through timm's load_checkpoint (no filter): the model's load hook reports it alike
    with pytest.raises(CheckpointMismatchError, match='pool_blocks'):
        model.load_state_dict(s2)


def test_head_count_from_the_authors_args(tiny):
    model, sd = tiny
    checkpoint = reference_hvt.authors_checkpoint(sd, 'hvt_ti_1', num_heads=6)
    with pytest.raises(CheckpointMismatchError, match='num_heads 6 in the checkpoint args vs 3 in the model'):
        checkpoint_filter_fn(checkpoint, model)


def test_head_of_another_class_count(tiny):
    model, sd = tiny
    ten = dict(sd, **{'head.weight': torch.zeros(10, 192), 'head.bias': torch.zeros(10)})
    with pytest.raises(CheckpointMismatchError, match='10-class head, the model 1000 classes'):
        checkpoint_filter_fn(ten, model)  # the pretrained cfg says 1000 too: timm would keep the head
    # a model built for another class count: the head is left for timm's loader to drop
    model10 = timm.create_model('hvt_ti_1', num_classes=10, **TINY)
    assert checkpoint_filter_fn(sd, model10)['head.weight'].shape == (1000, 192)


def test_not_an_hvt_checkpoint(tiny):
    model, _ = tiny
    resnet_like = {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(1000, 2048)}
    with pytest.raises(CheckpointMismatchError, match='not an HVT checkpoint'):
        checkpoint_filter_fn(resnet_like, model)


def test_missing_and_unexpected_keys_are_listed(tiny):
    model, sd = tiny
    broken = {k: v for k, v in sd.items() if k != 'blocks.1.attn.qkv.bias'}
    broken['dist_token'] = torch.zeros(1, 1, 192)
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint_filter_fn(broken, model)
    assert 'blocks.1.attn.qkv.bias missing' in str(info.value) and 'dist_token unexpected' in str(info.value)


def _resample_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == 'timm_hvt.checkpoint' and r.levelno == logging.WARNING]


@pytest.mark.parametrize('build', ['create_model', 'class'])
def test_load_state_dict_resamples_for_another_resolution_and_says_so(tiny, caplog, build):
    _, sd = tiny  # 224 x 224: 196 tokens, 97 after the pooling
    if build == 'create_model':
        model = timm.create_model('hvt_ti_1', img_size=288, **TINY)
    else:  # the class itself: the same hook, registered by its __init__
        model = HierarchicalVisionTransformer(img_size=288, embed_dim=192, num_heads=3, num_pool_stages=1, **TINY)
    model.load_state_dict(sd)
    assert model.pos_embed.shape == (1, 324, 192) and model.blocks[0].pos_embed.shape == (1, 161, 192)
    assert torch.equal(model.blocks[1].attn.qkv.weight, sd['blocks.1.attn.qkv.weight'])
    warnings = _resample_warnings(caplog)
    assert len(warnings) == 1
    assert 'pos_embed (1, 196, 192) -> (1, 324, 192)' in warnings[0]
    assert 'blocks.0.pos_embed (1, 97, 192) -> (1, 161, 192)' in warnings[0]
    caplog.clear()
    model.load_state_dict(model.state_dict())  # nothing to resample: nothing said
    assert not _resample_warnings(caplog)
    with pytest.raises(CheckpointMismatchError, match='1000-class head, the model 10 classes'):
        timm.create_model('hvt_ti_1', num_classes=10, **TINY).load_state_dict(sd)


def test_failed_strict_load_leaves_the_model_as_it_was(tiny):
    _, sd = tiny
    model = timm.create_model('hvt_ti_1', **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_missing = {k: v for k, v in sd.items() if k != 'blocks.1.mlp.fc2.bias'}
    with pytest.raises(CheckpointMismatchError, match='blocks.1.mlp.fc2.bias missing'):
        model.load_state_dict(one_missing)
    with pytest.raises(CheckpointMismatchError, match='dist_token unexpected'):
        model.load_state_dict(dict(sd, dist_token=torch.zeros(1, 1, 192)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f'{k} was changed by a failed load'
    # strict=False is the caller's choice: what is there loads, the rest is reported as torch reports it
    result = model.load_state_dict(one_missing, strict=False)
    assert result.missing_keys == ['blocks.1.mlp.fc2.bias'] and not result.unexpected_keys
    assert torch.equal(model.blocks[1].mlp.fc1.weight, sd['blocks.1.mlp.fc1.weight'])
    assert torch.equal(model.blocks[1].mlp.fc2.bias, before['blocks.1.mlp.fc2.bias'])


def test_layout_of_registered_variants():
    for arch in ('hvt_ti_1', 'hvt_s_0', 'hvt_s_3', 'hvt_s_4'):
        with torch.device('meta'):
            model = timm.create_model(arch)
        layout = layout_of({k: v.shape for k, v in model.state_dict().items()})
        assert layout.variant() == arch
        assert layout.pool_blocks == model.pool_blocks
