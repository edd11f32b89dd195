"""HVT through the components timm's train.py is made of, unchanged.

Covers: ImageFolder via create_dataset / create_loader with timm's train transforms (prefetcher + FastCollateMixup,
and the plain loader + Mixup), create_optimizer_v2 (AdamW, layer decay from group_matcher, no weight decay on
position embeddings / class token), create_scheduler_v2, ModelEmaV3, ClassificationTask, bf16 autocast, grad
checkpointing, and CheckpointSaver + resume that continues exactly where the interrupted run stopped. train.py's
--torchcompile is ClassificationTask.compile, a torch.compile of the model: test_compile.py compiles HVT with
inductor and fullgraph=True and checks a training forward and backward against eager.

Values that other kernels may round differently (checkpointed against plain) are compared relative to their own
size; exact equality only where one process must reproduce itself (resume).
"""
import argparse
import copy
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import timm
from timm import utils
from timm.data import FastCollateMixup, Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.models import resume_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import ModelEmaV3

from _helpers import SMALL_ARCH, SMALL_MODEL, image_folder_loader, relative_error, train_epoch

IMG = 32
SMALL = dict(img_size=IMG, **SMALL_ARCH)
BATCH = 32
IMAGES = 3 * BATCH  # per split of the digits: 3 steps per epoch

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


@pytest.fixture(scope='module')
def digits(digits_folder):
    return digits_folder(IMG, limit=IMAGES)


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


def test_loaders_mixup_and_bf16_autocast_training(digits):
    """timm's train loader (train transforms, prefetcher, FastCollateMixup) feeds HVT; under bf16 autocast the
    forward runs in bf16, gradients stay fp32, and the loss on a fixed real batch falls (the model can fit it)."""
    utils.random_seed(0, 0)  # the mixing draws too (numpy)
    model = _small_model()
    loader = image_folder_loader(
        digits, 'train', model, IMG, BATCH, is_training=True, scale=(0.5, 1.0), hflip=0.,
        collate_fn=FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0., num_classes=10))
    input, target = next(iter(loader))
    assert input.shape == (BATCH, 3, IMG, IMG) and input.dtype == torch.float32
    assert target.shape == (BATCH, 10)  # soft mixup / cutmix targets
    torch.testing.assert_close(target.sum(-1), torch.ones(BATCH))
    assert (target.max(-1).values < 0.99).any(), 'no sample was mixed'

    task = ClassificationTask(model, criterion=SoftTargetCrossEntropy(), verbose=False)
    model.train()
    autocast = lambda: torch.autocast('cpu', dtype=torch.bfloat16)  # noqa: E731  train.py's --amp-dtype bfloat16
    with autocast():
        result = task(input, target)
    assert result['output'].dtype == torch.bfloat16
    result['loss'].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
    model.zero_grad()

    first = last = None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(25):
        with autocast():
            loss = task(input, target)['loss']
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


SEED = 7
EPOCHS = 2


def _resume_run(root: str, out_dir: str = None) -> SimpleNamespace:
    """What train.py builds for a run, in its order: Mixup on the plain loader (with random erasing), layer decay,
    warmup + cosine per update, drop path, EMA with warmup; a CheckpointSaver when `out_dir` is given."""
    utils.random_seed(SEED, 0)
    model = _small_model(drop_path_rate=0.1)
    loader = image_folder_loader(root, 'train', model, IMG, BATCH, is_training=True, use_prefetcher=False,
                                 scale=(0.5, 1.0), hflip=0., re_prob=0.25)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    task = ClassificationTask(model, criterion=SoftTargetCrossEntropy(), verbose=False)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=2e-3, weight_decay=0.05, layer_decay=0.75)
    task.setup_ema(decay=0.9, use_warmup=True)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched='cosine', num_epochs=EPOCHS, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-5,
        step_on_epochs=False, updates_per_epoch=len(loader))
    saver = None
    if out_dir is not None:
        saver = utils.CheckpointSaver(
            model=model, optimizer=optimizer, args=argparse.Namespace(model=SMALL_MODEL), checkpoint_dir=out_dir,
            recovery_dir=out_dir, decreasing=False, max_history=2, task=task)
    return SimpleNamespace(model=model, loader=loader, mixup=mixup, task=task, optimizer=optimizer,
                           scheduler=scheduler, saver=saver)


def _train(run: SimpleNamespace, epochs: range) -> list:
    """Every epoch starts by re-seeding from (seed, epoch): train.py does not restore RNG state on resume, so
    without this a resumed run would see other crops and mixup draws than an uninterrupted one."""
    losses = []
    for epoch in epochs:
        utils.random_seed(SEED * 1000 + epoch, 0)
        losses += train_epoch(run.task, run.loader, run.optimizer, run.scheduler, epoch, mixup_fn=run.mixup)
    return losses


def _state(run: SimpleNamespace, ema: bool = False) -> dict:
    module = utils.unwrap_model(run.task.get_eval_model(ema=ema))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_checkpoint_saver_resume_continues_exactly(digits, tmp_path):
    """An interrupted run saved with CheckpointSaver and resumed with resume_task_checkpoint (as train.py --resume)
    continues exactly: the same per-step losses, weights, EMA weights and learning rate as an uninterrupted run."""
    full = _resume_run(digits)
    losses_full = _train(full, range(EPOCHS))
    steps = len(full.loader)
    assert steps == IMAGES // BATCH and len(losses_full) == EPOCHS * steps

    out_dir = str(tmp_path / 'run')
    os.makedirs(out_dir)
    first = _resume_run(digits, out_dir)
    losses_first = _train(first, range(1))
    first.saver.save_checkpoint(0, metric=-losses_first[-1])
    saved_state = _state(first)
    del first
    assert losses_first == losses_full[:steps]
    assert sorted(os.listdir(out_dir)) == ['checkpoint-0.pth.tar', 'last.pth.tar', 'model_best.pth.tar']

    resumed = _resume_run(digits, out_dir)
    last = os.path.join(out_dir, 'last.pth.tar')
    start_epoch = resume_task_checkpoint(resumed.task, last, optimizer=resumed.optimizer, log_info=False)
    load_task_ema_checkpoint(resumed.task, last)
    assert start_epoch == 1
    resumed.scheduler.step_update(start_epoch * steps)
    for k, v in _state(resumed).items():
        assert torch.equal(v, saved_state[k]), k
    losses_resumed = _train(resumed, range(start_epoch, EPOCHS))
    assert losses_resumed == losses_full[steps:], 'the resumed run diverged from the uninterrupted one'

    for ema in (False, True):
        state_full, state_resumed = _state(full, ema=ema), _state(resumed, ema=ema)
        for k in state_full:
            assert torch.equal(state_resumed[k], state_full[k]), f'{k} (ema={ema})'
    assert [g['lr'] for g in resumed.optimizer.param_groups] == [g['lr'] for g in full.optimizer.param_groups]
    # the task's EMA is timm's ModelEmaV3, and a real average, not a copy of the weights
    assert isinstance(full.task.get_trainable_module(ema=True), ModelEmaV3)
    assert not torch.equal(_state(full, ema=True)['head.weight'], _state(full)['head.weight'])
    print(f'resume: {len(losses_resumed)} resumed steps equal the uninterrupted run, losses {losses_full[0]:.4f} '
          f'-> {losses_full[-1]:.4f}')

    # control: the comparison is sensitive to the optimizer / schedule state - weights alone do not reproduce the run
    weights_only = _resume_run(digits)
    weights_only.model.load_state_dict(saved_state)
    weights_only.scheduler.step_update(start_epoch * steps)
    assert _train(weights_only, range(start_epoch, EPOCHS)) != losses_full[steps:]

    # timm.models.resume_checkpoint reads the same file into a bare model + optimizer
    model = _small_model()
    optimizer = create_optimizer_v2(model, opt='adamw', lr=2e-3, weight_decay=0.05, layer_decay=0.75)
    assert resume_checkpoint(model, os.path.join(out_dir, 'checkpoint-0.pth.tar'), optimizer, log_info=False) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved_state[k]), k
    assert optimizer.state_dict()['state'], 'optimizer state was not restored'
