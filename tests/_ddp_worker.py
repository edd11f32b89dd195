"""Worker of tests/test_distributed.py, started on 2 processes by torchrun (gloo backend, CPU).

usage: torchrun --nproc-per-node 2 ... tests/_ddp_worker.py DATA_DIR OUT_DIR

1. Trains a small HVT for a few steps with the pipeline of tests/_train_helpers.py (DistributedSampler loaders,
   mixup, bf16 autocast, EMA, ClassificationTask.prepare_distributed -> DistributedDataParallel, CheckpointSaver on
   rank 0).
2. DDP against one process: each rank takes its half of a batch, the ranks start from different weights; after
   DDP's broadcast and gradient averaging, the gradients of the first step and the weights after a few SGD steps
   must be those of a single process training on the whole batch (each rank computes that run itself).
3. For every global_pool / class-token setting, runs two DDP steps with find_unused_parameters=False (the default),
   which fails when a parameter gets no gradient, and checks every parameter got one.
Each rank writes rank{N}.json (results) and rank{N}.pt (final weights) to OUT_DIR.
"""
import datetime
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F

import timm  # (HVT registered by the autoload hook, no timm_hvt import)
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask
from timm.utils import unwrap_model

from _train_helpers import TrainConfig, Trainer, relative_error, unwrapped_state

ARCH = dict(patch_size=4, embed_dim=64, num_heads=2, depth=4)

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


def token_mean_ce(output, target):
    return F.cross_entropy(output.mean(1), target)


def all_ranks_equal(tensor: torch.Tensor) -> bool:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(t, gathered[0]) for t in gathered)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def train_pipeline(data_dir: str, out_dir: str, rank: int, world_size: int) -> dict:
    cfg = TrainConfig(
        model='hvt_ti_2', model_kwargs=dict(ARCH), img_size=32, drop_path=0.05, epochs=2, batch_size=32, lr=3e-3,
        warmup_epochs=1, mixup=0.2, cutmix=0.2, mixup_prob=0.3, smoothing=0.1,
        amp_dtype=torch.bfloat16, ema_decay=0.99, ema_warmup=True, prefetcher=True, seed=3)
    trainer = Trainer(cfg, data_dir, output_dir=out_dir, distributed=True, rank=rank, world_size=world_size)
    ddp_module = trainer.task.get_trainable_module()
    losses = trainer.fit()
    acc = torch.tensor([trainer.evaluate(), trainer.evaluate(ema=True)])
    dist.all_reduce(acc)
    acc /= world_size
    if trainer.saver is not None:
        trainer.save(epoch=trainer.num_epochs - 1, metric=float(acc[0]))
    torch.save({'model': unwrapped_state(trainer), 'ema': unwrapped_state(trainer, ema=True)},
               os.path.join(out_dir, f'rank{rank}.pt'))
    model = unwrap_model(ddp_module)
    return dict(
        wrapper=type(ddp_module).__name__,
        init_param_sum=trainer.init_param_sum,
        final_param_sum=float(sum(p.detach().double().sum() for p in model.parameters())),
        params_equal_across_ranks=all_ranks_equal(flat_params(model)),
        ema_equal_across_ranks=all_ranks_equal(flat_params(unwrap_model(trainer.task.get_trainable_module(ema=True)))),
        losses=losses,
        steps_per_epoch=trainer.updates_per_epoch,
        train_images_this_rank=len(trainer.loader_train.sampler),
        acc=float(acc[0]),
        ema_acc=float(acc[1]),
        train_seconds=trainer.train_seconds,
    )


def ddp_against_single_process(rank: int, world_size: int, per_rank_batch: int = 8, steps: int = 3) -> dict:
    """Relative errors of DDP's first-step gradients and of its weight updates after `steps` SGD steps against one
    process that trains rank 0's initial weights on the whole batch. Plain SGD, so that rounding differences stay
    as small as they are (an adaptive optimizer would scale them up to whole steps)."""
    def small_hvt(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return timm.create_model('hvt_ti_2', num_classes=10, img_size=32, **ARCH).train()

    single = small_hvt(seed=0)  # rank 0's initial weights
    initial = {n: p.detach().clone() for n, p in single.named_parameters()}
    task = ClassificationTask(small_hvt(seed=rank), criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    task.prepare_distributed(device_ids=None)  # broadcasts rank 0's weights
    ddp = task.get_trainable_module()
    model = unwrap_model(ddp)
    ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    single_opt = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)

    gen = torch.Generator().manual_seed(7)  # the same whole batches on every rank
    grad_errors = {}
    for step in range(steps):
        x = torch.randn(world_size * per_rank_batch, 3, 32, 32, generator=gen)
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
    model = timm.create_model(
        'hvt_ti_2', num_classes=10, img_size=32, global_pool=global_pool, class_token=class_token,
        **dict(ARCH, **extra))
    task = ClassificationTask(
        model, criterion=token_mean_ce if global_pool == '' else torch.nn.CrossEntropyLoss(), verbose=False)
    task.prepare_distributed(device_ids=None)  # find_unused_parameters=False
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt='adamw', lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    no_grad, error = set(), None
    try:
        for step in range(2):  # an unused parameter fails in the backward of the step after it was missed
            x = torch.randn(4, 3, 32, 32, generator=gen)
            y = torch.randint(0, 10, (4,), generator=gen)
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
    result = dict(rank=rank, world_size=world_size, hvt_registered='hvt_ti_2' in timm.list_models('hvt*'))
    try:
        result['pipeline'] = train_pipeline(data_dir, out_dir, rank, world_size)
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
