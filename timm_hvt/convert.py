"""Turning a checkpoint (the authors' release files included) into a Hugging Face Hub folder in timm's layout.

The folder holds `model.safetensors` and `config.json` (written by timm's `save_for_hf`, so `hf-hub:` and
`local-dir:` names rebuild the model, and transformers' timm wrapper loads it too) and a `README.md` model card.
The file is read by timm's own loader (weights only) and fitted by `checkpoint_filter_fn`; conversion reports
success only after reloading the folder through timm and matching the logits of the source checkpoint.
"""
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
from timm.data import ImageNetInfo
from timm.models import get_deprecated_models, load_state_dict, save_for_hf

from .flops import count_gmacs, count_params
from .errors import CheckpointMismatchError, add_note
from .hvt import HierarchicalVisionTransformer, checkpoint_filter_fn, source_grid_size
from .paper import ARXIV_ID, PAPER_RESULTS
from .sources import HUB_NAMESPACE_ENV, PROJECT_HUB_NAMESPACE, sha256_of

__all__ = ['HUB_FOLDER_FILES', 'ConvertResult', 'convert_checkpoint', 'hvt_model_name', 'model_card']

HUB_FOLDER_FILES = ('model.safetensors', 'config.json', 'README.md')
LOGITS_ATOL = 1e-5

CITATION = """@inproceedings{pan2021scalable,
  title     = {Scalable Vision Transformers with Hierarchical Pooling},
  author    = {Pan, Zizheng and Zhuang, Bohan and Liu, Jing and He, Haoyu and Cai, Jianfei},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""


class ConvertResult(NamedTuple):
    out_dir: str
    model_name: str
    repo_id: str
    params_m: float
    gmacs: float
    max_abs_diff: float


def _model_args_for(
        state_dict: Dict[str, torch.Tensor],
        model_name: str,
        img_size: Optional[Tuple[int, int]] = None,
) -> Dict[str, Any]:
    """The create_model kwargs that give `model_name` the checkpoint's head, input channels, patch and image size,
    where they differ from the variant's defaults. The image size is the checkpoint's patch grid, inferred as
    checkpoint_filter_fn infers it: from `img_size` (the size the weights were trained at, where known) or the
    variant's pretrained cfg, else a square grid."""
    if 'pos_embed' not in state_dict or 'patch_embed.proj.weight' not in state_dict:
        raise CheckpointMismatchError(
            f'Not an HVT checkpoint: it has no pos_embed / patch_embed.proj.weight (keys: {list(state_dict)[:6]})')
    with torch.device('meta'):
        default = timm.create_model(model_name)
    kernel = state_dict['patch_embed.proj.weight'].shape
    grid = source_grid_size(
        state_dict['pos_embed'].shape[1], kernel[2:], [img_size, default.pretrained_cfg['input_size']])
    found = dict(
        num_classes=state_dict['head.weight'].shape[0] if 'head.weight' in state_dict else 0,
        in_chans=kernel[1],
        patch_size=tuple(kernel[2:]),
        img_size=(grid[0] * kernel[2], grid[1] * kernel[3]),
    )
    defaults = dict(
        num_classes=default.num_classes,
        in_chans=default.in_chans,
        patch_size=tuple(default.patch_embed.patch_size),
        img_size=tuple(default.patch_embed.img_size),
    )
    return {k: v for k, v in found.items() if v != defaults[k]}


def hvt_model_name(name: str, released: bool = False) -> str:
    """`name` as a registered HVT model name, its pretrained tag kept; an alias (`scale_hvt_ti_4`) is resolved as
    timm.create_model resolves it. With `released`, the tag of its released weights ('hvt_ti_1' -> 'hvt_ti_1.in1k').
    ValueError for any other name."""
    aliases = {old: new for old, new in get_deprecated_models().items() if new and new.startswith('hvt_')}
    arch, _, tag = name.partition('.')
    if arch in aliases:
        arch, _, alias_tag = aliases[arch].partition('.')
        tag = tag or alias_tag
    if not (arch.startswith('hvt_') and timm.is_model(arch)):
        raise ValueError(f'{name!r} is not an HVT model: expected one of {", ".join(timm.list_models("hvt_*"))} '
                         f'(or {", ".join(aliases)}), optionally with a pretrained tag such as .in1k')
    if not released:
        return f'{arch}.{tag}' if tag else arch
    found = [t for t in timm.list_pretrained('hvt_*') if t == f'{arch}.{tag}' or (not tag and t.split('.')[0] == arch)]
    if len(found) != 1:
        released = ', '.join(timm.list_pretrained('hvt_*'))
        raise ValueError(f'{name!r} has no released weights: expected one of {released}')
    return found[0]


def _cost(model: HierarchicalVisionTransformer) -> Tuple[float, float]:
    """Params (M) and GMACs of `model` at its input size."""
    return count_params(model) / 1e6, count_gmacs(model, (model.in_chans, *model.patch_embed.img_size))


def model_card(
        model: HierarchicalVisionTransformer,
        model_name: str,
        repo_id: str,
        source: str,
        cost: Optional[Tuple[float, float]] = None,
) -> str:
    """README.md for the hub folder of `model`, with timm's model card metadata; `cost`: its (params M, GMACs), if
    already counted."""
    paper = PAPER_RESULTS.get(model_name.split('.')[0])
    height, width = model.patch_embed.img_size
    params_m, gmacs = cost or _cost(model)
    as_released = paper is not None and model.num_classes == 1000 and (height, width) == (224, 224) \
        and tuple(model.patch_embed.patch_size) == (16, 16)
    if as_released:
        results = f'| {model_name} | {params_m:.2f} | {gmacs:.2f} | {paper.top1:.2f} | {paper.top5:.2f} |\n\n' \
                  f'Top-1 / top-5: ImageNet-1k val, 224 x 224, as reported in the paper.'
    else:
        results = f'| {model_name} | {params_m:.2f} | {gmacs:.2f} | - | - |\n\n' \
                  'These weights differ from the paper\'s released setup; the paper reports no accuracy for them.'
    return f"""---
tags:
- image-classification
- timm
- hvt
library_name: timm
license: {model.pretrained_cfg.get('license') or 'apache-2.0'}
datasets:
- imagenet-1k
---
# Model card for {model_name}

{paper.paper_name if paper else model_name} image classification model from "Scalable Vision Transformers with \
Hierarchical Pooling" (Pan et al., ICCV 2021), converted to timm's layout by timm-hvt. HVT is a ViT without class \
token whose token sequence is max-pooled (1D, stride 2) once per stage; the head classifies the mean of the last \
stage's tokens.

## Model details
- **Params (M):** {params_m:.2f}
- **GMACs:** {gmacs:.2f}
- **Image size:** {height} x {width}
- **Classes:** {model.num_classes}
- **Paper:** [Scalable Vision Transformers with Hierarchical Pooling](https://arxiv.org/abs/{ARXIV_ID})
- **Original:** https://github.com/zhuang-group/HVT
- **Converted from:** `{os.path.basename(source)}` (sha256 `{sha256_of(source)}`)

## Results
| model | params (M) | GMACs | top-1 | top-5 |
|---|---|---|---|---|
{results}

## Usage
Install timm-hvt from a checkout of its source repository with `pip install .` (it is not on PyPI yet); it
registers the HVT models with timm:
```python
import timm, torch
from PIL import Image

model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
with torch.no_grad():
    probs = model(transform(Image.open('image.jpg').convert('RGB')).unsqueeze(0)).softmax(-1)
```
or with transformers: `pipeline('image-classification', model='{repo_id}')`.

## Citation
```bibtex
{CITATION}
```
"""


def _write_config(folder: str, model: HierarchicalVisionTransformer, model_args: Dict[str, Any]) -> None:
    """Make timm's config.json state `num_classes` once, at the top level (transformers' timm wrapper passes it
    itself, so a second one in `model_args` breaks its build), and carry ImageNet's class names."""
    path = os.path.join(folder, 'config.json')
    with open(path, encoding='utf-8') as f:
        config = json.load(f)
    config['num_classes'] = model.num_classes
    # the size the weights are at, which checkpoint_filter_fn reads (timm < 1.0.31 writes the variant's default)
    config['pretrained_cfg']['input_size'] = [model.in_chans, *model.patch_embed.img_size]
    config.pop('model_args', None)
    if model_args:
        config['model_args'] = {k: list(v) if isinstance(v, tuple) else v for k, v in model_args.items()}
    if model.num_classes == 1000:
        info = ImageNetInfo()
        descriptions = info.label_descriptions(as_dict=True)
        config['label_names'] = [descriptions[synset] for synset in info.label_names()]
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=2)


def convert_checkpoint(
        checkpoint_path: str,
        model_name: str,
        out_dir: str,
        repo_id: Optional[str] = None,
        overwrite: bool = False,
        img_size: Optional[Tuple[int, int]] = None,
) -> ConvertResult:
    """Write the hub folder of `checkpoint_path` as `model_name` to `out_dir`, verified by a reload through timm.
    `img_size`: the (height, width) the checkpoint was trained at, needed when its patch grid is not square."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f'{out_dir} exists and is not empty (pass --overwrite to replace it)')
    model_name = hvt_model_name(model_name)
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(
            f'{checkpoint_path} not found: expected a checkpoint file (.pth, .bin or .safetensors)')

    try:
        state_dict = load_state_dict(checkpoint_path)  # timm's reader: weights only, the authors' 'model' entry
    except Exception as e:
        add_note(e, f'(while reading {checkpoint_path})')
        raise
    create_args = _model_args_for(state_dict, model_name, img_size)
    model_args = {k: v for k, v in create_args.items() if k != 'num_classes'}  # config.json states it once, on top
    model = timm.create_model(model_name, **create_args)
    model.load_state_dict(checkpoint_filter_fn(state_dict, model))
    model.eval()
    if '.' not in model_name and model.pretrained_cfg.get('tag'):
        model_name = f'{model_name}.{model.pretrained_cfg["tag"]}'
    repo_id = repo_id or f'{os.environ.get(HUB_NAMESPACE_ENV) or PROJECT_HUB_NAMESPACE}/{model_name}'
    x = torch.randn(1, model.in_chans, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)

    cost = _cost(model)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.', dir=os.path.dirname(out_dir))
    try:
        save_for_hf(model, staging, safe_serialization=True)
        _write_config(staging, model, model_args)
        with open(os.path.join(staging, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(model_card(model, model_name, repo_id, checkpoint_path, cost))
        reloaded = timm.create_model(f'local-dir:{staging}', pretrained=True).eval()
        with torch.no_grad():
            diff = (reloaded(x) - expected).abs().max().item()
        if not diff <= LOGITS_ATOL:
            raise RuntimeError(f'Verification failed: the folder reloaded through timm gives logits {diff:.3g} away '
                               f'from the source checkpoint\'s (limit {LOGITS_ATOL})')
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        elif os.path.exists(out_dir):
            os.remove(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ConvertResult(out_dir, model_name, repo_id, *cost, diff)
