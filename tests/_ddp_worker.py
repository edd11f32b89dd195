"""Worker of tests/test_distributed.py, started on 2 processes by torchrun (gloo backend, CPU).

usage: torchrun --nproc-per-node 2 ... tests/_ddp_worker.py DATA_DIR OUT_DIR

1. Trains a small HVT for one short epoch the way train.py does under torchrun (DistributedSampler loaders,
   FastCollateMixup, bf16 autocast, EMA, ClassificationTask.prepare_distributed -> DistributedDataParallel,
   CheckpointSaver on rank 0); the ranks start from different weights.
2. DDP against one process: each rank takes its half of a batch; after DDP's broadcast and gradient averaging, the
   gradients of the first step and the weights after a few SGD steps must be those of a single process training on
   the whole batch (each rank computes that run itself).
3. For every global_pool / class-token setting, runs two DDP steps with find_unused_parameters=False (the default),
   which fails when a parameter gets no gradient, and checks every parameter got one.
Each rank writes rank{N}.json (results) and rank{N}.pt (final weights) to OUT_DIR.
"""
import argparse
import datetime
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F

import timm  # (HVT registered by the autoload hook, no timm_hvt import)
from timm import utils
from timm.data import FastCollateMixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask

from _helpers import SMALL_ARCH, SMALL_MODEL, image_folder_loader, relative_error, train_epoch

IMG = 32
BATCH = 24  # per rank

# (global_pool, class_token, extra model kwargs); global_pool='' returns all tokens, trained on their mean logits
SETTINGS = [
    ('avg', False, {}),
    ('avg', True, {}),
    ('max', False, {}),
    ('max', True, {}),
    ('avgmax', False, {}),
    ('avgmax', True, {}),
    ('token', True, {}),
    ('', False, {}),
    ('', True, {}),
    ('avg', True, dict(num_pool_stages=4, dynamic_img_size=True)),
    ('token', True, dict(num_pool_stages=0)),
]


def small_hvt(**kwargs) -> torch.nn.Module:
    return timm.create_model(SMALL_MODEL, num_classes=10, img_size=IMG, **dict(SMALL_ARCH, **kwargs))


def token_mean_ce(output, target):
    return F.cross_entropy(output.mean(1), target)


def all_ranks_equal(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(t, gathered[0]) for t in gathered)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def train_pipeline(data_dir: str, out_dir: str, rank: int) -> dict:
    utils.random_seed(3, rank)  # seeded per rank as in train.py: the ranks start apart until DDP syncs them
    model = small_hvt(drop_path_rate=0.05)
    init_param_sum = float(sum(p.detach().double().sum() for p in model.parameters()))
    mixup = FastCollateMixup(mixup_alpha=0.2, cutmix_alpha=0.2, prob=0.3, label_smoothing=0.1, num_classes=10)
    loader = image_folder_loader(data_dir, 'train', model, IMG, BATCH, is_training=True, distributed=True,
                                 scale=(0.5, 1.0), hflip=0., collate_fn=mixup)
    task = ClassificationTask(model, criterion=SoftTargetCrossEntropy(), verbose=False)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=3e-3, weight_decay=0.05)
    task.setup_ema(decay=0.99, use_warmup=True)
    # train.py passes device_ids=[device]; DDP only takes device ids for accelerators, so on CPU: None
    task.prepare_distributed(device_ids=None)
    ddp_module = task.get_trainable_module()
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=1, warmup_epochs=0,
                                       step_on_epochs=False, updates_per_epoch=len(loader))
    saver = None
    if rank == 0:
        saver = utils.CheckpointSaver(
            model=ddp_module, optimizer=optimizer, args=argparse.Namespace(model=SMALL_MODEL),
            checkpoint_dir=out_dir, recovery_dir=out_dir, decreasing=False, max_history=1, task=task)
    losses = train_epoch(task, loader, optimizer, scheduler, 0,
                         autocast=lambda: torch.autocast('cpu', dtype=torch.bfloat16))
    if saver is not None:
        saver.save_checkpoint(0, metric=-losses[-1])
    ema = utils.unwrap_model(task.get_trainable_module(ema=True))
    torch.save({'model': utils.unwrap_model(ddp_module).state_dict(), 'ema': ema.state_dict()},
               os.path.join(out_dir, f'rank{rank}.pt'))
    return dict(
        wrapper=type(ddp_module).__name__,
        init_param_sum=init_param_sum,
        params_equal_across_ranks=all_ranks_equal(flat_params(model)),
        ema_equal_across_ranks=all_ranks_equal(flat_params(ema)),
        losses=losses,
        train_images_this_rank=len(loader.sampler),
    )


def ddp_against_single_process(rank: int, world_size: int, per_rank_batch: int = 8, steps: int = 3) -> dict:
    """Relative errors of DDP's first-step gradients and of its weight updates after `steps` SGD steps against one
    process that trains rank 0's initial weights on the whole batch. Plain SGD, so that rounding differences stay
    as small as they are (an adaptive optimizer would scale them up to whole steps)."""
    torch.manual_seed(0)
    single = small_hvt().train()  # rank 0's initial weights
    initial = {n: p.detach().clone() for n, p in single.named_parameters()}
    torch.manual_seed(rank)
    task = ClassificationTask(small_hvt().train(), criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    task.prepare_distributed(device_ids=None)  # broadcasts rank 0's weights
    ddp = task.get_trainable_module()
    model = utils.unwrap_model(ddp)
    ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    single_opt = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)

    gen = torch.Generator().manual_seed(7)  # the same whole batches on every rank
    grad_errors = {}
    for step in range(steps):
        x = torch.randn(world_size * per_rank_batch, 3, IMG, IMG, generator=gen)
        y = torch.randint(0, 10, (world_size * per_rank_batch,), generator=gen)
        mine = slice(rank * per_rank_batch, (rank + 1) * per_rank_batch)
        task(x[mine], y[mine])['loss'].backward()
        F.cross_entropy(single(x), y).backward()
        if step == 0:
            single_grads = dict(single.named_parameters())
            grad_errors = {n: relative_error(p.grad, single_grads[n].grad) for n, p in model.named_parameters()}
        ddp_opt.step()
        ddp_opt.zero_grad()
        single_opt.step()
        single_opt.zero_grad()
    single_params = dict(single.named_parameters())
    update_errors = {
        n: relative_error(p - initial[n], single_params[n] - initial[n]) for n, p in model.named_parameters()}
    return dict(grad_errors=grad_errors, update_errors=update_errors, per_rank_batch=per_rank_batch, steps=steps)


def check_setting(global_pool: str, class_token: bool, extra: dict, rank: int) -> dict:
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = small_hvt(global_pool=global_pool, class_token=class_token, **extra)
    task = ClassificationTask(
        model, criterion=token_mean_ce if global_pool == '' else torch.nn.CrossEntropyLoss(), verbose=False)
    task.prepare_distributed(device_ids=None)  # find_unused_parameters=False
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt='adamw', lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    no_grad, error = set(), None
    try:
        for step in range(2):  # an unused parameter fails in the backward of the step after it was missed
            x = torch.randn(2, 3, IMG, IMG, generator=gen)
            y = torch.randint(0, 10, (2,), generator=gen)
            task(x, y)['loss'].backward()
            no_grad |= {n for n, p in model.named_parameters() if p.grad is None}
            optimizer.step()
            optimizer.zero_grad()
    except RuntimeError as e:
        error = f'{type(e).__name__}: {e}'[:400]
    return dict(
        global_pool=global_pool, class_token=class_token, extra=extra, error=error, params_without_grad=sorted(no_grad),
        params_equal_across_ranks=all_ranks_equal(flat_params(model)))


def main():
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=120))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    result = dict(rank=rank, world_size=world_size, hvt_registered=SMALL_MODEL in timm.list_models('hvt*'))
    try:
        result['pipeline'] = train_pipeline(data_dir, out_dir, rank)
        result['against_single_process'] = ddp_against_single_process(rank, world_size)
        result['settings'] = [check_setting(gp, cls, extra, rank) for gp, cls, extra in SETTINGS]
        dist.barrier()
        result['finished'] = True
    except Exception:
        result['finished'] = False
        result['traceback'] = traceback.format_exc()
        raise
    finally:
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(result, f, indent=1)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
