"""Real data: HVT learns scikit-learn's handwritten digits (1,797 real 8x8 scans) through timm's pipeline.

The digits are written to an ImageFolder (upsampled to 32x32) with a fixed stratified 80/20 split, and a small HVT
with two pooling stages (8x8 patches: 16 -> 7 -> 3 tokens) is trained on the train split for a few epochs with
timm's loaders, train transforms, AdamW, warmup + cosine schedule, label smoothing and ClassificationTask
(tests/_train_helpers.py, benchmarks/digits.py). It must classify the 360 held-out digits at least 95% right (it reaches about 97-98%;
chance is 10%), which a model or pipeline that mixes up images and labels, normalises wrongly, loses the pooled
tokens or does not train could not do. Mixup / CutMix, EMA and resuming are tested in test_training.py.
"""
import pytest

from _train_helpers import TrainConfig, train_and_evaluate
from benchmarks.digits import export_digits

HELD_OUT_ACCURACY = 0.95

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def digits_config() -> TrainConfig:
    return TrainConfig(
        model='hvt_ti_2',  # two pooling stages; only size overrides below
        model_kwargs=dict(patch_size=8, embed_dim=64, num_heads=2, depth=4),
        img_size=32,
        epochs=8,
        batch_size=16,
        lr=2e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        scale=(0.8, 1.0),
        hflip=0.,  # a mirrored digit is another symbol
        smoothing=0.1,
        prefetcher=True,
        seed=0,
    )


@pytest.mark.timeout(600)
def test_digits_hvt_learns_real_data(tmp_path):
    root = str(tmp_path / 'digits')
    counts = export_digits(root, img_size=32, val_fraction=0.2, seed=0)
    assert counts == {'train': 1437, 'val': 360}

    result = train_and_evaluate(digits_config(), root, 'hvt (2 pooling stages)', eval_every=2)
    curve = ', '.join(f'ep{e} {s:.0f}s {a:.3f}' for e, s, a in result['curve'])
    print(f'\nDIGITS: held-out acc {result["acc"]:.4f}, training time {result["train_seconds"]:.1f}s on '
          f'{result["threads"]} thread(s), {result["num_params"]} params, pooling after blocks '
          f'{result["pool_blocks"]}, {result["train_images"]} train / {result["val_images"]} val images [{curve}]')

    assert result['pool_blocks'] == [0, 2]
    assert result['train_images'] == 1437 and result['val_images'] == 360
    assert result['acc'] >= HELD_OUT_ACCURACY, f'HVT reached only {result["acc"]:.4f} on the held-out digits'
