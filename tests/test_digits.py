"""Real data: HVT learns scikit-learn's handwritten digits (1,797 real 8x8 scans) through timm's pipeline.

The digits are written to an ImageFolder (benchmarks/digits.py: upsampled, a fixed stratified 80/20 split), and a
small HVT with two pooling stages (4x4 patches of 16x16 images: 16 -> 7 -> 3 tokens) is trained on the train split
for a few epochs with timm's loaders (train transforms, prefetcher), AdamW, warmup + cosine schedule, label
smoothing and ClassificationTask, in train.py's order (tests/_helpers.py). It must classify the 360 held-out digits
at least 95% right (chance is 10%), which a model or pipeline that mixes up images and labels, normalises wrongly,
loses the pooled tokens or does not train could not do. Mixup / CutMix, EMA and resuming are tested in
test_training.py.
"""
import pytest
import torch

import timm
from timm import utils
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask

from _helpers import SMALL_MODEL, accuracy, image_folder_loader, train_epoch

HELD_OUT_ACCURACY = 0.95
IMG = 16
EPOCHS = 6
BATCH = 32

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def test_digits_hvt_learns_real_data(digits_folder):
    root = digits_folder(IMG)
    utils.random_seed(0, 0)
    model = timm.create_model(SMALL_MODEL, num_classes=10, img_size=IMG, patch_size=4, embed_dim=64, num_heads=2,
                              depth=4)  # two pooling stages; only size overrides
    assert model.pool_blocks == (0, 2)
    train = image_folder_loader(root, 'train', model, IMG, BATCH, is_training=True, scale=(0.8, 1.0),
                                hflip=0.)  # a mirrored digit is another symbol
    val = image_folder_loader(root, 'val', model, IMG, 2 * BATCH, is_training=False)
    assert (len(train.dataset), len(val.dataset)) == (1437, 360)

    task = ClassificationTask(model, criterion=LabelSmoothingCrossEntropy(smoothing=0.1), verbose=False)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=3e-3, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=EPOCHS, warmup_epochs=1,
                                       warmup_lr=1e-5, min_lr=1e-5, step_on_epochs=False,
                                       updates_per_epoch=len(train))
    losses = [sum(train_epoch(task, train, optimizer, scheduler, epoch)) / len(train) for epoch in range(EPOCHS)]
    acc = accuracy(model, val)
    print(f'\nDIGITS: held-out accuracy {acc:.4f} after {EPOCHS} epochs, mean loss per epoch '
          f'{", ".join(f"{loss:.3f}" for loss in losses)}, {torch.get_num_threads()} thread(s)')
    assert acc >= HELD_OUT_ACCURACY, f'HVT reached only {acc:.4f} on the held-out digits'
