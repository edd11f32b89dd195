"""Shared pieces of the training, digits and distributed tests.

* `Trainer`: a small training loop assembled only from the timm components timm's train.py is built from
  (`create_model`, `resolve_data_config`, `create_dataset`, `create_loader` with its train transforms and the
  prefetcher, `Mixup` / `FastCollateMixup`, the soft-target / label-smoothing losses, `ClassificationTask`,
  `create_optimizer_v2`, `create_scheduler_v2`, `ModelEmaV3` via the task, `torch.autocast`, DistributedDataParallel
  via the task, `CheckpointSaver` and `resume_task_checkpoint`), wired in the order train.py wires them. Nothing
  of the model is special-cased: HVT goes through exactly what any timm model would.
* `relative_error`: how the tests compare values that other kernels, thread counts or compilation may round
  differently (exact equality is kept for determinism within one process).

One deliberate difference: every epoch starts by re-seeding the RNGs from (seed, epoch, rank). train.py does not
restore RNG state on resume, so without this a resumed run would see other crops and mixup draws than an
uninterrupted one and the two could not be compared loss for loss.
"""
import argparse
import dataclasses
import os
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

import timm
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint

DIGITS_NUM_CLASSES = 10


@dataclasses.dataclass
class TrainConfig:
    model: str = 'hvt_ti_2'
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    img_size: int = 32
    num_classes: int = DIGITS_NUM_CLASSES
    drop_path: float = 0.
    batch_size: int = 64
    epochs: int = 10
    # optimizer / schedule (train.py's --opt, --lr, --weight-decay, --layer-decay, --sched, --warmup-*)
    opt: str = 'adamw'
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: Optional[float] = None
    sched: str = 'cosine'
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    sched_on_updates: bool = True
    # data / augmentation (train.py's --scale, --ratio, --hflip, --color-jitter, --reprob, --mixup, --cutmix, ...)
    scale: Tuple[float, float] = (0.5, 1.0)
    ratio: Tuple[float, float] = (3. / 4., 4. / 3.)
    hflip: float = 0.
    color_jitter: float = 0.
    reprob: float = 0.
    mixup: float = 0.
    cutmix: float = 0.
    mixup_prob: float = 1.
    mixup_off_epoch: int = 0
    smoothing: float = 0.1
    prefetcher: bool = True
    workers: int = 0
    amp_dtype: Optional[torch.dtype] = None  # train.py's --amp --amp-dtype
    # EMA (train.py's --model-ema)
    ema_decay: Optional[float] = None
    ema_warmup: bool = False
    seed: int = 0


class Trainer:
    """timm's train.py in miniature: the same components, built and called in the same order."""

    def __init__(self, cfg: TrainConfig, data_dir: str, output_dir: Optional[str] = None,
                 distributed: bool = False, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.device = torch.device('cpu')
        self.distributed = distributed
        self.rank = rank
        self.world_size = world_size
        utils.random_seed(cfg.seed, rank)

        model = timm.create_model(
            cfg.model,
            num_classes=cfg.num_classes,
            img_size=cfg.img_size,
            drop_path_rate=cfg.drop_path,
            **cfg.model_kwargs,
        )
        # seeded per rank as in train.py, so under DDP the ranks start from different weights until DDP syncs them
        self.init_param_sum = float(sum(p.detach().double().sum() for p in model.parameters()))
        # the model's own pretrained_cfg says 224 / crop .875; the images here are exactly img_size
        self.data_config = resolve_data_config(
            dict(img_size=cfg.img_size, crop_pct=1.0), model=model, verbose=False)
        model.to(device=self.device)

        self.amp_autocast = nullcontext
        if cfg.amp_dtype is not None:
            self.amp_autocast = partial(torch.autocast, device_type=self.device.type, dtype=cfg.amp_dtype)

        dataset_train = create_dataset(
            '', root=data_dir, split='train', is_training=True, batch_size=cfg.batch_size, seed=cfg.seed)
        dataset_eval = create_dataset('', root=data_dir, split='val', is_training=False, batch_size=cfg.batch_size)

        self.mixup_fn = None
        collate_fn = None
        self.mixup_active = cfg.mixup > 0 or cfg.cutmix > 0
        if self.mixup_active:
            mixup_args = dict(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=0.5,
                mode='batch', label_smoothing=cfg.smoothing, num_classes=cfg.num_classes)
            if cfg.prefetcher:
                collate_fn = FastCollateMixup(**mixup_args)
            else:
                self.mixup_fn = Mixup(**mixup_args)

        common = dict(
            mean=self.data_config['mean'], std=self.data_config['std'], device=self.device,
            distributed=distributed, use_prefetcher=cfg.prefetcher, num_workers=cfg.workers,
            persistent_workers=cfg.workers > 0)
        self.loader_train = create_loader(
            dataset_train, input_size=self.data_config['input_size'], batch_size=cfg.batch_size,
            is_training=True, re_prob=cfg.reprob, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip,
            color_jitter=cfg.color_jitter, interpolation=self.data_config['interpolation'],
            collate_fn=collate_fn, **common)
        self.loader_eval = create_loader(
            dataset_eval, input_size=self.data_config['input_size'], batch_size=cfg.batch_size,
            is_training=False, interpolation=self.data_config['interpolation'],
            crop_pct=self.data_config['crop_pct'], **common)

        if self.mixup_active:
            train_loss_fn = SoftTargetCrossEntropy()  # mixup already smoothed the targets
        elif cfg.smoothing:
            train_loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            train_loss_fn = nn.CrossEntropyLoss()
        self.task = ClassificationTask(model=model, criterion=train_loss_fn, device=self.device, verbose=False)
        self.model = self.task.get_trainable_module()

        self.optimizer = create_optimizer_v2(
            self.model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)

        if cfg.ema_decay is not None:
            self.task.setup_ema(decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
        if distributed:
            # train.py passes device_ids=[device]; DDP only takes device ids for accelerators, so on CPU: None
            self.task.prepare_distributed(device_ids=None)
        self.model = self.task.get_trainable_module()

        self.saver = None
        if output_dir is not None and rank == 0:
            self.saver = utils.CheckpointSaver(
                model=self.model, optimizer=self.optimizer, args=argparse.Namespace(model=cfg.model),
                checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=False, max_history=2,
                task=self.task)

        self.updates_per_epoch = len(self.loader_train)
        self.lr_scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=not cfg.sched_on_updates,
            updates_per_epoch=self.updates_per_epoch)
        self.start_epoch = 0
        self.train_seconds = 0.

    def resume(self, checkpoint_path: str) -> int:
        """Load model, task, optimizer (and EMA) state the way train.py's --resume does; returns the next epoch."""
        resume_epoch = resume_task_checkpoint(self.task, checkpoint_path, optimizer=self.optimizer, log_info=False)
        if self.task.has_ema():
            load_task_ema_checkpoint(self.task, checkpoint_path)
        self.start_epoch = resume_epoch
        if self.start_epoch > 0:
            if self.cfg.sched_on_updates:
                self.lr_scheduler.step_update(self.start_epoch * self.updates_per_epoch)
            else:
                self.lr_scheduler.step(self.start_epoch)
        return resume_epoch

    def train_epoch(self, epoch: int) -> List[float]:
        """One epoch; returns the loss of every step."""
        cfg = self.cfg
        utils.random_seed(cfg.seed * 1000 + epoch, self.rank)
        for sampler in (getattr(self.loader_train, 'batch_sampler', None), self.loader_train.sampler):
            if hasattr(sampler, 'set_epoch'):  # DistributedSampler: a new shuffle per epoch
                sampler.set_epoch(epoch)
                break
        if cfg.mixup_off_epoch and epoch >= cfg.mixup_off_epoch:
            if cfg.prefetcher and self.mixup_active:
                self.loader_train.mixup_enabled = False
            elif self.mixup_fn is not None:
                self.mixup_fn.mixup_enabled = False

        t0 = time.perf_counter()
        self.task.get_trainable_module().train()
        num_updates = epoch * self.updates_per_epoch
        losses = []
        self.optimizer.zero_grad()
        for input, target in self.loader_train:
            if not cfg.prefetcher:
                input, target = input.to(self.device), target.to(self.device)
                if self.mixup_fn is not None:
                    input, target = self.mixup_fn(input, target)
            with self.amp_autocast():
                result = self.task(input, target)
            loss = result['loss']
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            num_updates += 1
            self.task.update_ema(step=num_updates)
            self.lr_scheduler.step_update(num_updates=num_updates)
            losses.append(loss.item())
        self.lr_scheduler.step(epoch + 1)
        self.train_seconds += time.perf_counter() - t0
        return losses

    def fit(self) -> List[float]:
        """Train from start_epoch to the end of the schedule; returns the loss of every step."""
        return [loss for epoch in range(self.start_epoch, self.num_epochs) for loss in self.train_epoch(epoch)]

    @torch.no_grad()
    def evaluate(self, ema: bool = False) -> float:
        """Top-1 accuracy (fraction) on the val split; with `distributed`, this rank's shard only."""
        model = self.task.get_eval_model(ema=ema)
        model.eval()
        correct = total = 0
        for input, target in self.loader_eval:
            if not self.cfg.prefetcher:
                input, target = input.to(self.device), target.to(self.device)
            with self.amp_autocast():
                output = model(input)
            correct += (output.argmax(-1) == target).sum().item()
            total += target.numel()
        return correct / total

    def save(self, epoch: int, metric: Optional[float] = None) -> None:
        self.saver.save_checkpoint(epoch, metric=metric)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius norms, in float64): a tolerance relative to the size of the
    values compared, whatever their scale, thread count or the CPU's kernels."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f'shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}'
    scale = expected.norm().item()
    assert scale > 0, 'the expected values are all zero: a relative error says nothing'
    return (actual - expected).norm().item() / scale


def unwrapped_state(trainer: Trainer, ema: bool = False) -> Dict[str, torch.Tensor]:
    """State dict of the bare model (or its EMA), without DDP / compile wrappers, cloned to CPU."""
    module = trainer.task.get_eval_model(ema=ema)
    return {k: v.detach().clone() for k, v in utils.unwrap_model(module).state_dict().items()}


def train_and_evaluate(cfg: TrainConfig, data_dir: str, name: str, num_threads: Optional[int] = None,
                       eval_every: int = 0) -> Dict[str, Any]:
    """Train `cfg` on `data_dir` and return accuracies, timings and the loss curve (runs in a worker process)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    trainer = Trainer(cfg, data_dir)
    model = utils.unwrap_model(trainer.model)
    curve = []
    for epoch in range(trainer.num_epochs):
        losses = trainer.train_epoch(epoch)
        line = f'[{name}] epoch {epoch + 1}/{trainer.num_epochs}: loss {np.mean(losses):.3f}, ' \
               f'{trainer.train_seconds:.1f}s'
        if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < trainer.num_epochs:
            acc = trainer.evaluate()
            curve.append((epoch + 1, trainer.train_seconds, acc))
            line += f', val acc {acc:.4f}'
        print(line, flush=True)
    acc = trainer.evaluate()
    curve.append((trainer.num_epochs, trainer.train_seconds, acc))
    return dict(
        name=name,
        acc=acc,
        ema_acc=trainer.evaluate(ema=True) if trainer.task.has_ema() else None,
        train_seconds=trainer.train_seconds,
        curve=curve,
        num_params=sum(p.numel() for p in model.parameters()),
        pool_blocks=list(getattr(model, 'pool_blocks', ())),
        threads=torch.get_num_threads(),
        train_images=len(trainer.loader_train.dataset),
        val_images=len(trainer.loader_eval.dataset),
    )
