"""HVT through the components timm's train.py is made of, unchanged.

Covers: ImageFolder via create_dataset / create_loader with timm's train transforms (prefetcher + FastCollateMixup
and plain loader + Mixup), create_optimizer_v2 (AdamW, layer decay from group_matcher, no weight decay on position
embeddings / class token), create_scheduler_v2, ModelEmaV3, ClassificationTask, bf16 autocast, grad checkpointing,
torch.compile and CheckpointSaver + resume that continues exactly where the interrupted run stopped.

Values that other kernels may round differently (compiled against eager, checkpointed against plain) are compared
relative to their own size; exact equality only where one process must reproduce itself (resume).
"""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

import timm
from timm.models import resume_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask
from timm import utils
from timm.utils import ModelEmaV3

from _train_helpers import TrainConfig, Trainer, relative_error, unwrapped_state
from benchmarks.digits import export_digits

# a small HVT: 32x32 input, 4x4 patches -> 64 tokens, pooled after blocks 0 and 2 -> 31 -> 15 tokens
SMALL_ARCH = dict(patch_size=4, embed_dim=64, num_heads=2, depth=4)
SMALL = dict(img_size=32, **SMALL_ARCH)
SMALL_MODEL = 'hvt_ti_2'


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


@pytest.fixture(scope='module')
def digits_small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('digits_small'))
    export_digits(root, img_size=32, limit=192)
    return root


def _small_model(**kwargs):
    return timm.create_model(SMALL_MODEL, num_classes=10, **dict(SMALL, **kwargs))


def test_optimizer_layer_decay_and_no_weight_decay():
    model = _small_model(class_token=True)
    depth = len(model.blocks)
    assert model.pool_blocks == (0, 2)
    lr, wd, decay = 1e-2, 0.05, 0.5
    optimizer = create_optimizer_v2(model, opt='adamw', lr=lr, weight_decay=wd, layer_decay=decay)
    assert isinstance(optimizer, torch.optim.AdamW)
    # the scheduler applies each group's lr_scale, as in train.py
    create_scheduler_v2(optimizer, sched='cosine', num_epochs=10, warmup_epochs=0)

    group_of = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert id(p) not in group_of, 'a parameter is in two groups'
            group_of[id(p)] = group
    named = dict(model.named_parameters())
    assert len(group_of) == len(named), 'some parameters are not optimized'

    # no weight decay on every position embedding (the stem's and each pooling block's) and the class token
    no_decay_tokens = [n for n in named if n.endswith('pos_embed') or n == 'cls_token']
    assert sorted(no_decay_tokens) == ['blocks.0.pos_embed', 'blocks.2.pos_embed', 'cls_token', 'pos_embed']
    for name, p in named.items():
        group = group_of[id(p)]
        expect_wd = 0. if (p.ndim <= 1 or name in no_decay_tokens) else wd
        assert group['weight_decay'] == expect_wd, name
        # layer ids from group_matcher: stem 0, blocks.i -> i + 1 (a pooling block's own position embedding
        # with it), the final norm joins the last block, the head (unmatched) on top with the full learning rate
        if name.startswith(('patch_embed', 'pos_embed', 'cls_token')):
            layer = 0
        elif name.startswith('blocks.'):
            layer = int(name.split('.')[1]) + 1
        elif name.startswith('norm.'):
            layer = depth
        else:
            assert name.startswith('head.'), name
            layer = depth + 1
        expect_scale = decay ** (depth + 1 - layer)
        assert group['lr_scale'] == pytest.approx(expect_scale), name
        assert group['lr'] == pytest.approx(lr * expect_scale), name

    # behaviour, not just bookkeeping: with zero gradients AdamW only applies decoupled weight decay
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in named.items():
        group = group_of[id(p)]
        expected = before[name] * (1 - group['lr'] * group['weight_decay'])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-8, msg=name)
        if name in no_decay_tokens:
            assert torch.equal(p.detach(), before[name]), f'{name} was decayed'
    assert not torch.equal(named['blocks.3.mlp.fc1.weight'], before['blocks.3.mlp.fc1.weight'])


def test_loaders_mixup_and_bf16_autocast_training(digits_small):
    """timm's train loader (train transforms, prefetcher, FastCollateMixup) feeds HVT; under bf16 autocast the
    forward runs in bf16, gradients stay fp32, and the loss on a fixed real batch falls (the model can fit it)."""
    trainer = Trainer(TrainConfig(
        model=SMALL_MODEL, model_kwargs=dict(SMALL_ARCH), epochs=1, batch_size=32, mixup=0.8, cutmix=1.0,
        smoothing=0., amp_dtype=torch.bfloat16), digits_small)
    input, target = next(iter(trainer.loader_train))
    assert input.shape == (32, 3, 32, 32) and input.dtype == torch.float32
    assert target.shape == (32, 10)  # soft mixup / cutmix targets
    torch.testing.assert_close(target.sum(-1), torch.ones(32))
    assert (target.max(-1).values < 0.99).any(), 'no sample was mixed'

    model = trainer.model
    model.train()
    with trainer.amp_autocast():
        result = trainer.task(input, target)
    assert result['output'].dtype == torch.bfloat16
    result['loss'].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    trainer.optimizer.zero_grad()

    first = last = None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(25):
        with trainer.amp_autocast():
            loss = trainer.task(input, target)['loss']
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = loss.item() if first is None else first
        last = loss.item()
    print(f'bf16 autocast: loss on one mixed batch {first:.3f} -> {last:.3f}')
    assert last < 0.6 * first


def test_grad_checkpointing_same_loss_and_gradients():
    torch.manual_seed(0)
    ref = _small_model(drop_path_rate=0.2)  # stochastic depth: checkpoint recompute must replay the same RNG
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    ref.train()
    ckpt.train()
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))

    # count block forward calls (module hooks are not run again by the non-reentrant recompute, so wrap forward)
    calls = {'n': 0}

    def counting(forward):
        def wrapped(*args, **kwargs):
            calls['n'] += 1
            return forward(*args, **kwargs)
        return wrapped

    for model in (ref, ckpt):
        for blk in model.blocks:
            blk.forward = counting(blk.forward)
    results = []
    for model in (ref, ckpt):
        calls['n'] = 0
        torch.manual_seed(123)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}, calls['n']))
    assert results[0][2] == len(ref.blocks)
    (loss_ref, grads_ref, _), (loss_ckpt, grads_ckpt, ckpt_calls) = results
    # every block ran twice: forward, then the recompute in backward -> checkpointing is really on
    assert ckpt_calls == 2 * len(ckpt.blocks)
    assert relative_error(loss_ckpt, loss_ref) <= 1e-6
    assert grads_ref.keys() == grads_ckpt.keys()
    for name in grads_ref:
        assert relative_error(grads_ckpt[name], grads_ref[name]) <= 1e-5, name

    # forward_intermediates honours the flag too (same features, recompute in backward)
    for model in (ref, ckpt):
        model.zero_grad()
    ref.eval()
    ckpt.eval()
    feats = []
    for model in (ref, ckpt):
        final, inter = model.forward_intermediates(x, indices=[1, 3])
        (final.sum() + sum(t.sum() for t in inter)).backward()
        feats.append((final.detach(), model.patch_embed.proj.weight.grad.clone()))
    assert relative_error(feats[1][0], feats[0][0]) <= 1e-6
    assert relative_error(feats[1][1], feats[0][1]) <= 1e-5


@pytest.mark.timeout(600)  # a cold inductor cache compiles C++ kernels for the forward and the backward graph
def test_torch_compile_training_step_matches_eager():
    """ClassificationTask.compile (what train.py --torchcompile calls): inductor with fullgraph=True, so any graph
    break fails, and one training step gives the eager logits, loss and gradients.

    This is the suite's only torch.compile (a cold inductor cache takes tens of seconds on 2 cores). It compares one step,
    each value relative to its own size, and not the parameters after optimizer steps: AdamW divides by the running
    gradient scale, so last-bit differences between compiled and eager kernels would grow into whole steps."""
    torch.manual_seed(0)
    # two blocks, each followed by a pooling (64 -> 31 -> 15 tokens): the pooling block and its position embedding,
    # timm's Block inside it, the mean-pooled head; fewer blocks make a smaller graph to compile.
    # drop_path 0: the training forward is deterministic
    model = _small_model(depth=2, num_pool_stages=2)
    assert model.pool_blocks == (0, 1)
    eager = copy.deepcopy(model)
    task = ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    task.compile(backend='inductor', fullgraph=True)
    assert task.get_trainable_module() is not model  # the task now runs the compiled module
    eager_task = ClassificationTask(eager, criterion=torch.nn.CrossEntropyLoss(), verbose=False)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)

    def training_forward_backward(t):
        t.get_trainable_module().train()
        out = t(x, y)
        out['loss'].backward()
        return out

    compiled_out, eager_out = training_forward_backward(task), training_forward_backward(eager_task)
    assert relative_error(compiled_out['output'], eager_out['output']) <= 1e-5
    assert relative_error(compiled_out['loss'], eager_out['loss']) <= 1e-5
    eager_params = dict(eager.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, f'{name}: no gradient through the compiled graph'
        assert relative_error(p.grad, eager_params[name].grad) <= 1e-4, name


def _resume_cfg():
    return TrainConfig(
        model=SMALL_MODEL, model_kwargs=dict(SMALL_ARCH), drop_path=0.1, epochs=3, batch_size=32,
        lr=2e-3, layer_decay=0.75, warmup_epochs=1, mixup=0.8, cutmix=1.0, smoothing=0.1, reprob=0.25,
        prefetcher=False, ema_decay=0.9, ema_warmup=True, seed=7)


@pytest.mark.timeout(600)
def test_checkpoint_saver_resume_continues_exactly(digits_small, tmp_path):
    """An interrupted run saved with CheckpointSaver and resumed with resume_task_checkpoint (as train.py --resume)
    continues exactly: the same per-step losses, weights, EMA weights and learning rate as an uninterrupted run.
    (Mixup via timm.data.Mixup on the plain loader, layer decay, warmup + cosine per update, drop path, random
    erasing and EMA all active; fp32 here, bf16 autocast is covered above and by the DDP test.)"""
    full = Trainer(_resume_cfg(), digits_small)
    losses_full = full.fit()
    steps = full.updates_per_epoch
    assert steps == 6 and len(losses_full) == 3 * steps

    out_dir = str(tmp_path / 'run')
    os.makedirs(out_dir)
    first = Trainer(_resume_cfg(), digits_small, output_dir=out_dir)
    losses_first = [loss for epoch in range(2) for loss in first.train_epoch(epoch)]
    first.save(epoch=1, metric=first.evaluate())
    saved_state = unwrapped_state(first)
    del first
    assert losses_first == losses_full[:2 * steps]
    assert sorted(os.listdir(out_dir)) == ['checkpoint-1.pth.tar', 'last.pth.tar', 'model_best.pth.tar']

    resumed = Trainer(_resume_cfg(), digits_small, output_dir=out_dir)
    assert resumed.resume(os.path.join(out_dir, 'last.pth.tar')) == 2
    for k, v in unwrapped_state(resumed).items():
        assert torch.equal(v, saved_state[k]), k
    losses_resumed = resumed.fit()
    assert len(losses_resumed) == steps
    assert losses_resumed == losses_full[2 * steps:], 'the resumed run diverged from the uninterrupted one'

    for ema in (False, True):
        state_full, state_resumed = unwrapped_state(full, ema=ema), unwrapped_state(resumed, ema=ema)
        for k in state_full:
            assert torch.equal(state_resumed[k], state_full[k]), f'{k} (ema={ema})'
    assert [g['lr'] for g in resumed.optimizer.param_groups] == [g['lr'] for g in full.optimizer.param_groups]
    # the task's EMA is timm's ModelEmaV3, and a real average, not a copy of the weights
    assert isinstance(full.task.get_trainable_module(ema=True), ModelEmaV3)
    assert not torch.equal(unwrapped_state(full, ema=True)['head.weight'], unwrapped_state(full)['head.weight'])
    print(f'resume: {len(losses_resumed)} resumed steps equal the uninterrupted run, losses {losses_full[0]:.4f} '
          f'-> {losses_full[-1]:.4f}')

    # control: the comparison is sensitive to the optimizer / schedule state - weights alone do not reproduce the run
    weights_only = Trainer(_resume_cfg(), digits_small)
    utils.unwrap_model(weights_only.model).load_state_dict(saved_state)
    weights_only.start_epoch = 2
    assert weights_only.fit() != losses_full[2 * steps:]

    # timm.models.resume_checkpoint reads the same file into a bare model + optimizer
    model = timm.create_model(SMALL_MODEL, num_classes=10, **SMALL)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=2e-3, weight_decay=0.05, layer_decay=0.75)
    assert resume_checkpoint(model, os.path.join(out_dir, 'checkpoint-1.pth.tar'), optimizer, log_info=False) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved_state[k]), k
    assert optimizer.state_dict()['state'], 'optimizer state was not restored'
