"""The HVT models against the paper (its architecture and Table 1), and timm's model API on them.

Every one of the ten variants is checked here (structure, params / GMACs, a training step); timm's own model
suite (test_timm_conformance.py) runs on three of them. Models are built on the meta device
wherever no values are needed. Errors are checked by type and by the facts they must name, not by wording.
"""
import copy
import re

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.optim import create_optimizer_v2

from timm_hvt.flops import count_gmacs, count_params
from timm.models.vision_transformer import Block

from timm_hvt import tokens_to_grid
from timm_hvt.hvt import HierarchicalVisionTransformer, PoolingBlock, pool_block_indices, pool_tokens
from timm_hvt.paper import PAPER_BASELINES, PAPER_RESULTS

from _helpers import assert_compiled_step_matches_eager, relative_error

VARIANTS = [f'hvt_{size}_{m}' for size in ('ti', 's') for m in range(5)]

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def _small(**kwargs) -> HierarchicalVisionTransformer:
    args = dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_pool_stages=2, num_classes=7)
    args.update(kwargs)
    return HierarchicalVisionTransformer(**args)


def _on_meta(name: str, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def _pooled_lens(model) -> list:
    return [blk.pos_embed.shape[1] for blk in model.blocks if hasattr(blk, 'pos_embed')]


def test_registry_lists_every_variant():
    assert timm.list_models('hvt*') == sorted(VARIANTS)


@pytest.mark.smoke
@pytest.mark.parametrize('name', VARIANTS)
def test_variant_architecture_follows_the_spec(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    size, stages = name.split('_')[1:]
    dim, heads = {'ti': (192, 3), 's': (384, 6)}[size]
    assert (model.embed_dim, len(model.blocks)) == (dim, 12)
    assert all(blk.attn.num_heads == heads and blk.attn.head_dim == 64 for blk in model.blocks)
    assert all(blk.norm1.eps == 1e-6 and blk.attn.qkv.bias is not None for blk in model.blocks)
    assert all(blk.mlp.fc1.out_features == 4 * dim for blk in model.blocks)
    # pooled after blocks 0, 12/M, ...; sequence 196 -> 97 -> 48 -> 23 -> 11 at 224 / 16
    assert model.pool_blocks == {'0': (), '1': (0,), '2': (0, 6), '3': (0, 4, 8), '4': (0, 3, 6, 9)}[stages]
    assert _pooled_lens(model) == [97, 48, 23, 11][:int(stages)]
    assert model.pos_embed.shape == (1, 196, dim)
    assert model.cls_token is None


@pytest.mark.smoke
@pytest.mark.parametrize('name', VARIANTS)
def test_every_variant_trains_a_step(name):
    """Forward, loss and backward of each variant (at 96x96 to stay cheap: 36 tokens -> 17 -> 8 -> 3 -> 1): finite
    logits, the pooled token count of its M, and a finite gradient for every parameter."""
    model = _on_meta(name, img_size=96, num_classes=5).to_empty(device='cpu').train()
    torch.manual_seed(0)
    with torch.no_grad():  # values only need to be finite and non-degenerate (the init is tested on its own)
        for param in model.parameters():
            param.normal_(0., 0.02).add_(0.01)
    stages = int(name[-1])
    x = torch.randn(2, 3, 96, 96)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, [36, 17, 8, 3, 1][stages], model.embed_dim)
    logits = model.forward_head(tokens)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f'{pname}: zero gradient'


@pytest.mark.parametrize('name', VARIANTS)
def test_params_and_gmacs_equal_the_paper(name):
    model = _on_meta(name)  # shapes are all the counters need
    paper = PAPER_RESULTS.get(name)
    params, gmacs = count_params(model) / 1e6, count_gmacs(model)
    if paper is None:  # no row in the paper: each pooling stage adds a position embedding and removes compute
        size, stages = name.rsplit('_', 1)
        if int(stages) > 0:
            fewer = _on_meta(f'{size}_{int(stages) - 1}')
            assert params > count_params(fewer) / 1e6 and gmacs < count_gmacs(fewer)
        else:  # M=0: DeiT-Ti without the class token and its position embedding row
            deit = _on_meta('deit_tiny_patch16_224')
            assert count_params(model) == count_params(deit) - 2 * deit.embed_dim and gmacs < count_gmacs(deit)
    else:
        assert round(params, 2) == paper.params_m
        assert round(gmacs, 2) == paper.gmacs


@pytest.mark.parametrize('name', sorted(PAPER_BASELINES))
def test_gmacs_of_the_paper_baselines(name):
    """The same counter on timm's DeiT gives the paper's DeiT figures: the convention is the paper's."""
    assert round(count_gmacs(_on_meta(name)), 2) == PAPER_BASELINES[name].gmacs


def test_gmacs_count_both_attention_matmuls():
    """On real CPU tensors: the fused attention kernel CPUs run is counted like the explicit matmuls."""
    model = timm.create_model('hvt_ti_1')
    fused = count_gmacs(model)
    for module in model.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = False
    explicit = count_gmacs(model)
    # 12 blocks: q@k^T and attn@v are 2 * N^2 * D MACs each block, N = 196 for block 0, 97 after
    attn = (2 * 196 ** 2 * 192 + 11 * 2 * 97 ** 2 * 192) / 1e9
    assert fused == pytest.approx(explicit, rel=1e-9)
    assert fused - attn == pytest.approx(count_gmacs_without_attention(model), rel=1e-6)


def count_gmacs_without_attention(model) -> float:
    """Linear layers and the patch conv only, counted by hand from the module shapes."""
    macs = model.patch_embed.proj.weight.numel() * model.patch_embed.num_patches
    n = model.patch_embed.num_patches
    for i, blk in enumerate(model.blocks):
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            macs += lin.weight.numel() * n
        if hasattr(blk, 'pos_embed'):
            n = blk.pos_embed.shape[1]
    macs += model.head.weight.numel()
    return macs / 1e9


@pytest.mark.parametrize('width, stages, expected', [
    (12, None, (0,)), (6, None, (0, 6)), (4, None, (0, 4, 8)), (3, None, (0, 3, 6, 9)),
    (None, 0, ()), (None, 1, (0,)), (None, 2, (0, 6)), (None, 3, (0, 4, 8)), (None, 4, (0, 3, 6, 9)),
    (3, 4, (0, 3, 6, 9)),
])
def test_pool_schedule_by_width_or_stages(width, stages, expected):
    assert pool_block_indices(12, width, stages) == expected


@pytest.mark.parametrize('width, stages, match', [
    (None, 5, 'num_pool_stages=5'), (3, 2, 'num_pool_stages=2'), (0, None, 'pool_block_width'),
    (None, 13, 'num_pool_stages'),
])
def test_pool_schedule_rejects_inconsistent_settings(width, stages, match):
    with pytest.raises(ValueError, match=match):
        pool_block_indices(12, width, stages)


def test_too_small_input_raises_at_construction_naming_the_limit():
    # 64 / 16 = a 4x4 grid: 16 -> 7 -> 3 -> 1 tokens, too few for a fourth kernel-3 pooling
    with pytest.raises(ValueError) as err:
        _on_meta('hvt_s_4', img_size=64)
    assert '4x4' in str(err.value) and re.search(r'\b3\b', str(err.value)), 'names the patch grid and the kernel'
    _on_meta('hvt_s_2', img_size=64)  # 16 -> 7 -> 3 tokens is fine


@pytest.mark.parametrize('pool_type', ['max', 'avg'])
def test_token_pooling_over_kernel3_stride2_along_tokens(pool_type):
    """A pooling block: timm's Block, then max (the paper) or mean (its ablation) over windows of 3 tokens, stride 2."""
    model = _small(num_pool_stages=1, depth=1, pool_type=pool_type).eval()
    blk = model.blocks[0]
    tokens = torch.randn(2, 64, 64)
    with torch.no_grad():
        blk.pos_embed.zero_()
        pooled = blk(tokens)
        mixed = tokens + blk.attn(blk.norm1(tokens))
        mixed = mixed + blk.mlp(blk.norm2(mixed))
    reduce = {'max': lambda w: w.amax(dim=1), 'avg': lambda w: w.mean(dim=1)}[pool_type]
    windows = torch.stack([reduce(mixed[:, 2 * j:2 * j + 3]) for j in range(31)], dim=1)
    torch.testing.assert_close(pooled, windows)


@pytest.mark.parametrize('pool_type', ['max', 'avg'])
def test_pool_tokens_values_and_gradients(pool_type):
    # one implementation for training and inference: the windows' max / mean, and their gradient
    tokens = torch.randn(2, 50, 16, requires_grad=True)
    pooled = pool_tokens(tokens, 3, 2, pool_type)
    reduce = {'max': lambda w: w.amax(dim=1), 'avg': lambda w: w.mean(dim=1)}[pool_type]
    windows = torch.stack([reduce(tokens[:, 2 * j:2 * j + 3]) for j in range(24)], dim=1)
    assert pooled.shape == (2, 24, 16) and pooled.is_contiguous()
    torch.testing.assert_close(pooled, windows)
    with torch.no_grad():
        assert torch.equal(pool_tokens(tokens, 3, 2, pool_type), pooled.detach())
    weights = torch.randn(2, 24, 16)
    grad, = torch.autograd.grad((pooled * weights).sum(), tokens)
    expected, = torch.autograd.grad((windows * weights).sum(), tokens)
    torch.testing.assert_close(grad, expected)


def test_pooling_block_is_timms_block_then_pooling():
    """PoolingBlock takes Block's arguments (attn_mask, is_causal) and computes what Block computes, then pools;
    scripted, it gives what it gives eagerly (TorchScript runs a restatement of Block's forward)."""
    torch.manual_seed(0)
    pooling = PoolingBlock(32, 2, seq_len=7, qkv_bias=True).eval()
    block = Block(32, 2, qkv_bias=True).eval()
    block.load_state_dict({k: v for k, v in pooling.state_dict().items() if k != 'pos_embed'})
    torch.nn.init.normal_(pooling.pos_embed)
    scripted = torch.jit.script(pooling)
    x = torch.randn(2, 16, 32)
    mask = torch.randn(16, 16)
    with torch.no_grad():
        for kwargs in ({}, dict(attn_mask=mask), dict(is_causal=True)):
            expected = pool_tokens(block(x, **kwargs), 3, 2) + pooling.pos_embed
            out = pooling(x, **kwargs)
            torch.testing.assert_close(out, expected)
            torch.testing.assert_close(scripted(x, **kwargs), out)
        assert not torch.allclose(pooling(x, attn_mask=mask), pooling(x))  # the mask reaches the attention


def test_class_token_is_kept_out_of_the_pooling():
    model = _small(class_token=True, global_pool='token').eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 15, 64)  # 64 patches -> 31 -> 15, plus the class token
    assert model(x).shape == (2, 7)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
    model.reset_classifier(0, 'avg')
    torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))


def test_global_pool_modes():
    model = _small().eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(1))
    model.reset_classifier(0, '')
    torch.testing.assert_close(model(x), tokens)
    with pytest.raises(ValueError, match='class_token'):
        model.reset_classifier(0, 'token')
    with pytest.raises(ValueError, match="global_pool must be one of"):
        _small(global_pool='map')
    with pytest.raises(ValueError, match='class_token=True'):
        _small(global_pool='token')
    with pytest.raises(ValueError, match="pool_type must be one of"):
        _small(pool_type='lp')


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match='not_an_arg'):
        timm.create_model('hvt_ti_1', not_an_arg=1)


def _names(message: str, *numbers: int) -> bool:
    return all(re.search(rf'\b{n}\b', message) for n in numbers)


def test_wrong_channel_count_names_expected_and_given():
    model = timm.create_model('hvt_ti_1', img_size=64).eval()
    with pytest.raises(RuntimeError) as err:  # torch's convolution error
        model(torch.randn(1, 5, 64, 64))
    assert _names(str(err.value), 3, 5), f'expected (3) and given (5) channels not named: {err.value}'


def test_wrong_image_size_on_fixed_size_model_names_both_sizes():
    model = timm.create_model('hvt_ti_1', img_size=64).eval()
    with pytest.raises((AssertionError, ValueError)) as err:  # timm's patch embedding check
        model(torch.randn(1, 3, 80, 80))
    assert _names(str(err.value), 80, 64), f'given (80) and model (64) size not named: {err.value}'


def test_dynamic_input_too_small_is_a_value_error():
    model = timm.create_model('hvt_ti_4', dynamic_img_size=True).eval()
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 3, 64, 64))
    assert '4x4' in str(err.value), f'the patch grid is not named: {err.value}'
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)  # 6x6: 36 -> 17 -> 8 -> 3 -> 1 tokens


def test_pretrained_cfg_fields():
    for name in VARIANTS:
        with torch.device('meta'):
            cfg = timm.create_model(name, pretrained=False).pretrained_cfg
        assert cfg['input_size'] == (3, 224, 224)
        assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
        assert tuple(cfg['mean']) == IMAGENET_DEFAULT_MEAN and tuple(cfg['std']) == IMAGENET_DEFAULT_STD
        assert (cfg['first_conv'], cfg['classifier']) == ('patch_embed.proj', 'head')
        assert cfg['license'] == 'apache-2.0' and cfg['paper_ids'] == 'arXiv:2103.10619'
    data_cfg = timm.data.resolve_data_config(model=_on_meta('hvt_s_4'))
    assert data_cfg['crop_pct'] == 0.875 and data_cfg['interpolation'] == 'bicubic'


def test_no_weight_decay_covers_every_position_embedding_and_token():
    model = _small(class_token=True, global_pool='token')
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in optimizer.param_groups if g['weight_decay'] == 0 for p in g['params']}
    for name, param in model.named_parameters():
        if name.endswith('pos_embed') or name == 'cls_token':
            assert id(param) in no_decay, name
    assert id(model.blocks[0].attn.qkv.weight) not in no_decay


def test_layer_decay_groups_follow_block_depth():
    model = _small()
    optimizer = create_optimizer_v2(model, 'adamw', lr=1.0, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g['lr_scale'] for g in optimizer.param_groups for p in g['params']}
    stem, block0, block3, head = (scale_of[id(p)] for p in (
        model.pos_embed, model.blocks[0].pos_embed, model.blocks[3].mlp.fc2.weight, model.head.weight))
    assert stem < block0 < block3 < head == 1.0


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = _small(drop_path_rate=0.).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


def test_forward_intermediates_tokens_and_maps_per_block():
    model = _small(depth=4, num_pool_stages=2).eval()  # pooled after blocks 0 and 2
    x = torch.randn(2, 3, 64, 64)
    final, inter = model.forward_intermediates(x, output_fmt='NLC')
    assert [t.shape[1] for t in inter] == [31, 31, 15, 15]
    torch.testing.assert_close(final, model.forward_features(x))
    only = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True, output_fmt='NLC')
    torch.testing.assert_close(only[0], inter[1])
    # NCHW, the default: each block's tokens on the 8x8 patch grid (tests/test_backbone.py checks the index)
    maps = model.forward_intermediates(x, indices=[3, 1], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8)] * 2
    for m, t in zip(maps, (inter[1], inter[3])):  # in block order, as the tokens
        torch.testing.assert_close(m, tokens_to_grid(t, (8, 8)))
    for model in (model, _small(num_pool_stages=0)):
        with pytest.raises(ValueError, match='NHWC'):
            model.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.smoke
def test_prune_intermediate_layers_and_features_only():
    model = _small(depth=4, num_pool_stages=2).eval()
    x = torch.randn(2, 3, 64, 64)
    _, inter = model.forward_intermediates(x)
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([1]) == [1]
    assert len(pruned.blocks) == 2 and pruned.num_classes == 0
    torch.testing.assert_close(pruned.forward_intermediates(x, indices=[1], intermediates_only=True)[0], inter[1])
    features = timm.create_model('hvt_ti_4', features_only=True, out_indices=(0, 5, 11)).eval()
    out = features(torch.randn(1, 3, 224, 224))  # maps on the 14x14 patch grid of 97, 48 and 11 tokens
    assert [o.shape for o in out] == [(1, 192, 14, 14)] * 3 and features.feature_info.reduction() == [16] * 3
    assert [len(o[0, 0].unique()) for o in out] == [97, 48, 11]


def test_dynamic_img_size_matches_fixed_model_and_resamples_every_embedding():
    fixed = timm.create_model('hvt_ti_2').eval()
    dynamic = timm.create_model('hvt_ti_2', dynamic_img_size=True).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = torch.randn(2, 3, 224, 224)
    out, expected = dynamic(x), fixed(x)
    assert (out - expected).norm() <= 1e-6 * expected.norm()
    tokens = dynamic.forward_features(torch.randn(1, 3, 288, 320))
    # 18x20 = 360 patches -> 179 -> 89
    assert tokens.shape == (1, 89, 192)


def test_set_input_size_resamples_and_keeps_requires_grad():
    model = timm.create_model('hvt_ti_2')
    model.pos_embed.requires_grad_(False)
    model.set_input_size(img_size=288)
    assert model.pos_embed.shape == (1, 324, 192) and not model.pos_embed.requires_grad
    assert _pooled_lens(model) == [161, 80]
    assert model(torch.randn(1, 3, 288, 288)).shape == (1, 1000)
    with pytest.raises(ValueError):
        _on_meta('hvt_ti_4').set_input_size(img_size=64)


def test_set_input_size_rejection_leaves_the_model_unchanged():
    model = timm.create_model('hvt_ti_4')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        model.set_input_size(img_size=48)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.patch_embed.img_size == (224, 224)


def test_meta_device_and_factory_kwargs():
    with torch.device('meta'):
        model = timm.create_model('hvt_s_4')
    assert all(p.is_meta for p in model.parameters())
    assert model(torch.randn(1, 3, 224, 224, device='meta')).shape == (1, 1000)
    model = timm.create_model('hvt_ti_1', img_size=64, device='cpu', dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_dtype_change_after_forward():
    model = _small().eval()
    x = torch.randn(1, 3, 64, 64)
    model(x)
    model.to(torch.float64)
    assert model(x.double()).dtype == torch.float64


def test_init_follows_deit():
    model = timm.create_model('hvt_s_1')
    for name, param in model.named_parameters():
        if name.endswith('pos_embed'):
            assert 0.018 < param.std().item() < 0.022 and abs(param.mean().item()) < 0.002, name
    assert all((blk.attn.qkv.bias == 0).all() for blk in model.blocks)
    assert (model.head.bias == 0).all() and 0.015 < model.head.weight.std().item() < 0.025
    assert (model.norm.weight == 1).all() and (model.norm.bias == 0).all()


def test_init_weights_modes():
    model = _small(num_classes=7)
    model.init_weights('jax')  # timm's ViT modes, by position as in timm: a zero head is the JAX init's mark
    assert (model.head.weight == 0).all()
    model.init_weights()
    assert 0.01 < model.head.weight.std().item() < 0.03
    with pytest.raises(ValueError, match='init mode'):
        model.init_weights('nope')


def test_drop_path_increases_linearly():
    model = _on_meta('hvt_s_2', drop_path_rate=0.1)
    rates = [0.0] + [blk.drop_path1.drop_prob for blk in list(model.blocks)[1:]]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])


@pytest.fixture(scope='module')
def tiny_and_input():
    torch.manual_seed(0)
    return _small(depth=3, class_token=False).eval(), torch.randn(2, 3, 64, 64)


def test_torch_jit_script(tiny_and_input):
    model, x = tiny_and_input
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_torch_fx_symbolic_trace(tiny_and_input):
    model, x = tiny_and_input
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))


@pytest.mark.smoke  # torch.compile at the dependency floors too (test_training.py compiles through timm's task)
def test_torch_compile_fullgraph_maps_match_eager():
    """Every block's NCHW map of a 2-block HVT with a class token, each block pooled, compiled as
    test_compile.py compiles the classifier: eager's maps and gradients."""
    torch.manual_seed(0)
    model = _small(depth=2, num_pool_stages=2, img_size=32, patch_size=4, class_token=True)

    def maps(m: HierarchicalVisionTransformer):
        return lambda x: torch.cat([f.flatten(1) for f in m.forward_intermediates(x, intermediates_only=True)], 1)

    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_compiled_step_matches_eager(model, maps, x)
