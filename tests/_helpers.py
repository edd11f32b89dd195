"""What several test files share: the relative error they compare values with, and the few timm training pieces
(loader, epoch loop, accuracy) that the training, digits and distributed tests wire the way timm's train.py does.
"""
import copy
from contextlib import nullcontext
from typing import Callable, List, Optional

import torch
import torch.nn as nn
from timm.data import create_dataset, create_loader, resolve_data_config

# a small HVT for 32x32 inputs: 4x4 patches -> 64 tokens; hvt_ti_2 pools after blocks 0 and 2 -> 31 -> 15 tokens
SMALL_MODEL = 'hvt_ti_2'
SMALL_ARCH = dict(patch_size=4, embed_dim=64, num_heads=2, depth=4)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius norms, in float64): a tolerance relative to the size of the
    values compared, whatever their scale, thread count or the CPU's kernels."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f'shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}'
    scale = expected.norm().item()
    assert scale > 0, 'the expected values are all zero: a relative error says nothing'
    return (actual - expected).norm().item() / scale


def assert_compiled_step_matches_eager(model: nn.Module, forward: Callable[[nn.Module], Callable],
                                       x: torch.Tensor) -> None:
    """inductor with fullgraph=True (any graph break fails): one training forward and backward through
    `forward(copy of model)`, compiled, give eager's outputs and gradients, each relative to its own size."""
    model.train()
    twin = copy.deepcopy(model)
    results = []
    for m, run in ((twin, torch.compile(forward(twin), backend='inductor', fullgraph=True)), (model, forward(model))):
        out = run(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in m.parameters() if p.grad is not None]))
    (compiled_out, compiled_grads), (eager_out, eager_grads) = results
    assert relative_error(compiled_out, eager_out) <= 1e-5
    assert len(compiled_grads) == len(eager_grads) > 0
    assert all(relative_error(c, e) <= 1e-4 for c, e in zip(compiled_grads, eager_grads))


def image_folder_loader(root: str, split: str, model: nn.Module, img_size: int, batch_size: int,
                        is_training: bool, color_jitter: float = 0., **loader_kwargs) -> torch.utils.data.DataLoader:
    """timm's loader over an ImageFolder split, normalised as the model's pretrained cfg says. The images are
    exactly img_size (crop_pct 1), not the cfg's 224 / 0.875, and gray digits: no colour jitter by default."""
    config = resolve_data_config(dict(img_size=img_size, crop_pct=1.0), model=model, verbose=False)
    dataset = create_dataset('', root=root, split=split, is_training=is_training, batch_size=batch_size)
    return create_loader(
        dataset, input_size=config['input_size'], batch_size=batch_size, is_training=is_training,
        mean=config['mean'], std=config['std'], interpolation=config['interpolation'],
        crop_pct=config['crop_pct'], color_jitter=color_jitter, device=torch.device('cpu'), num_workers=0,
        **loader_kwargs)


def train_epoch(task: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, epoch: int,
                mixup_fn: Optional[Callable] = None, autocast: Callable = nullcontext) -> List[float]:
    """One epoch in train.py's order (forward through the task, step, EMA update, per-update then per-epoch
    schedule); returns every step's loss."""
    task.get_trainable_module().train()
    if hasattr(loader.sampler, 'set_epoch'):  # DistributedSampler: a new shuffle per epoch
        loader.sampler.set_epoch(epoch)
    num_updates = epoch * len(loader)
    losses = []
    for input, target in loader:
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        with autocast():
            loss = task(input, target)['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        num_updates += 1
        task.update_ema(step=num_updates)
        scheduler.step_update(num_updates=num_updates)
        losses.append(loss.item())
    scheduler.step(epoch + 1)
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy (fraction) of `model` on `loader`."""
    model.eval()
    correct = total = 0
    for input, target in loader:
        correct += (model(input).argmax(-1) == target).sum().item()
        total += target.numel()
    return correct / total
