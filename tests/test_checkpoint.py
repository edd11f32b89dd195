"""checkpoint_filter_fn: which checkpoint forms fit, what it resamples (between any two patch grids, from the grid
the checkpoint's metadata states), how another variant is reported; and `model.load_state_dict` keeping torch's own
semantics."""
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import save_for_hf

from benchmarks import authors_hvt as reference_hvt
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


def _at_grid(grid, **kwargs):
    """A 2-block hvt_ti_1 for a (rows, columns) grid of 16-pixel patches."""
    return timm.create_model('hvt_ti_1', img_size=(16 * grid[0], 16 * grid[1]), **TINY, **kwargs)


def _pooled_len(grid):
    return (grid[0] * grid[1] - 3) // 2 + 1


def _assert_moved(out, sd, source, target):
    torch.testing.assert_close(out['pos_embed'], resample_abs_pos_embed(sd['pos_embed'], list(target), list(source), 0))
    expected_1d = sd['blocks.0.pos_embed']
    if _pooled_len(source) != _pooled_len(target):
        expected_1d = resample_pos_embed_1d(expected_1d, _pooled_len(target))
    torch.testing.assert_close(out['blocks.0.pos_embed'], expected_1d)


GRID_MOVES = [((14, 20), (16, 16)), ((16, 16), (20, 14)), ((14, 20), (20, 14))]


@pytest.mark.parametrize('source, target', GRID_MOVES)
def test_filter_moves_a_checkpoint_between_patch_grids(source, target):
    torch.manual_seed(0)
    sd = _at_grid(source).state_dict()
    stated = dict(pretrained_cfg_overlay=dict(input_size=(3, 16 * source[0], 16 * source[1])))
    out = checkpoint_filter_fn(sd, _at_grid(target, **stated))
    _assert_moved(out, sd, source, target)
    assert not torch.equal(out['pos_embed'][:, :5], sd['pos_embed'][:, :5])  # a 280 -> 280 move is resampled too
    if source[0] == source[1]:  # a square grid needs no metadata
        _assert_moved(checkpoint_filter_fn(sd, _at_grid(target)), sd, source, target)


@pytest.mark.parametrize('source, target', GRID_MOVES)
def test_pretrained_file_moves_between_patch_grids(source, target, tmp_path):
    """timm's own route (pretrained_cfg_overlay file, as --pretrained-path): the overlay states the file's size."""
    torch.manual_seed(0)
    sd = _at_grid(source).state_dict()
    path = save_hub_weights(tmp_path / 'model.safetensors', sd)
    overlay = dict(file=str(path), input_size=(3, 16 * source[0], 16 * source[1]))
    model = _at_grid(target, pretrained=True, pretrained_cfg_overlay=overlay)
    _assert_moved(model.state_dict(), sd, source, target)


@pytest.mark.parametrize('target', [(24, 24), (20, 14)])
def test_save_for_hf_folder_of_a_non_square_model_loads_at_another_grid(target, tmp_path):
    """A folder timm's save_for_hf wrote for a 224x320 model records that size (timm >= 1.0.31); timm's local-dir:
    route hands it to the filter, which resamples from the 14x20 grid, also to the 20x14 one of as many tokens."""
    torch.manual_seed(0)
    source = _at_grid((14, 20))
    save_for_hf(source, str(tmp_path), model_args=dict(TINY, img_size=(224, 320)))
    model = timm.create_model(f'local-dir:{tmp_path}', pretrained=True, img_size=(16 * target[0], 16 * target[1]))
    assert model.patch_embed.grid_size == target
    _assert_moved(model.state_dict(), source.state_dict(), (14, 20), target)


def test_checkpoint_grid_that_cannot_be_told_is_named():
    sd = _at_grid((14, 20)).state_dict()  # 280 tokens: not square, and no metadata states 224x320
    with pytest.raises(CheckpointMismatchError) as info:
        checkpoint_filter_fn(sd, _at_grid((16, 16)))
    assert '280' in str(info.value) and '224x224' in str(info.value)  # the tokens, and what the metadata states
    # as many tokens as the model's own grid and nothing stated: taken as the model's grid, as timm's ViT does
    out = checkpoint_filter_fn(sd, _at_grid((14, 20)))
    assert all(torch.equal(out[k], v) for k, v in sd.items())


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
