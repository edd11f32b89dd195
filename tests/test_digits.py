"""Real data: HVT learns scikit-learn's handwritten digits (1,797 real 8x8 scans) through timm's pipeline.

The digits are written to an ImageFolder (upsampled to 32x32) with a fixed stratified 80/20 split, and a small HVT
with two pooling stages (64 -> 31 -> 15 tokens) is trained on the train split with timm's loaders, train transforms,
mixup / cutmix, AdamW, cosine schedule, EMA and ClassificationTask (tests/_train_helpers.py). The same
configuration with pooling off is trained beside it, each run in its own process on one core, so the two training
times compare like for like. The log reports both accuracies and times; the pooled model must reach 97% on the
held-out split.
"""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from _train_helpers import TrainConfig, export_digits, train_and_evaluate

ARCH = dict(patch_size=4, embed_dim=64, num_heads=2, depth=4)


def digits_config(**model_kwargs) -> TrainConfig:
    return TrainConfig(
        model='hvt_ti_2',  # two pooling stages; only size overrides below
        model_kwargs=dict(ARCH, **model_kwargs),
        img_size=32,
        epochs=20,
        batch_size=64,
        lr=3e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        scale=(0.6, 1.0),
        hflip=0.,  # a mirrored digit is another symbol
        mixup=0.2,
        cutmix=0.2,
        mixup_prob=0.3,
        mixup_off_epoch=12,
        smoothing=0.1,
        ema_decay=0.999,
        ema_warmup=True,
        prefetcher=True,
        seed=0,
    )


@pytest.mark.timeout(900)
def test_digits_hvt_learns_real_data(tmp_path):
    root = str(tmp_path / 'digits')
    counts = export_digits(root, img_size=32, val_fraction=0.2, seed=0)
    assert counts == {'train': 1437, 'val': 360}

    runs = {
        'hvt (2 pooling stages)': digits_config(),
        'hvt pooling off': digits_config(num_pool_stages=0),
    }
    ctx = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = {name: pool.submit(train_and_evaluate, cfg, root, name, 1, 5) for name, cfg in runs.items()}
        results = {name: f.result(timeout=850) for name, f in futures.items()}

    print()
    for name, r in results.items():
        curve = ', '.join(f'ep{e} {s:.0f}s {a:.3f}' for e, s, a in r['curve'])
        print(f'DIGITS {name}: held-out acc {r["acc"]:.4f} (EMA {r["ema_acc"]:.4f}), training time '
              f'{r["train_seconds"]:.1f}s on {r["threads"]} thread(s), {r["num_params"]} params, pooling after '
              f'blocks {r["pool_blocks"]}, {r["train_images"]} train / {r["val_images"]} val images [{curve}]')

    pooled, flat = results['hvt (2 pooling stages)'], results['hvt pooling off']
    assert pooled['pool_blocks'] == [0, 2] and flat['pool_blocks'] == []
    assert pooled['train_images'] == 1437 and pooled['val_images'] == 360
    assert pooled['acc'] >= 0.97, f'pooled HVT reached only {pooled["acc"]:.4f} on the held-out digits'
    # the model without pooling must learn as well (chance is 0.10), whatever its final accuracy
    assert flat['acc'] >= 0.5, f'HVT without pooling reached only {flat["acc"]:.4f}'
