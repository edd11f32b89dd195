"""scikit-learn's bundled digits (1,797 real 8x8 scans) as an ImageFolder (`train/`, `val/`: a stratified split),
upsampled to RGB: `python -m benchmarks.digits digits32 [--img-size 32]`."""
import argparse
import os
from typing import Dict, Optional

NUM_CLASSES = 10


def export_digits(root: str, img_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                  limit: Optional[int] = None) -> Dict[str, int]:
    """Write the digits to `root` as PNGs of img_size x img_size (bicubic upsampling). The val split is a stratified
    `val_fraction` of the images, fixed by `seed`; `limit` keeps only the first images of each split. Returns the
    number of images per split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * (255. / 16.), 0, 255).round().astype(np.uint8)
    labels = digits.target
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed)
    counts = {}
    for split, indices in (('train', train_idx), ('val', val_idx)):
        indices = indices[:limit]
        for label in range(NUM_CLASSES):
            os.makedirs(os.path.join(root, split, str(label)), exist_ok=True)
        for i in indices:
            img = Image.fromarray(images[i], mode='L').resize((img_size, img_size), Image.BICUBIC).convert('RGB')
            img.save(os.path.join(root, split, str(labels[i]), f'{i:04d}.png'))
        counts[split] = len(indices)
    return counts


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root')
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--limit', type=int, default=None, help='images per split (default: all)')
    args = parser.parse_args()
    print(export_digits(args.root, args.img_size, limit=args.limit))
