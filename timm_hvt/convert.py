"""Turning a checkpoint (the authors' release files included) into a Hugging Face Hub folder in timm's layout,
and uploading such a folder.

A hub folder holds `model.safetensors`, `config.json` (written by timm, so `hf-hub:` / `local-dir:` names rebuild
the model) and a `README.md` model card. Conversion only reports success after reloading the folder through
timm and matching its logits against the model built from the source checkpoint.
"""
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = [
    'HUB_FOLDER_FILES', 'ConvertResult', 'convert_checkpoint', 'model_card', 'check_hub_folder', 'push_folder',
]

HUB_FOLDER_FILES = ('model.safetensors', 'config.json', 'README.md')
LOGITS_ATOL = 1e-5

CITATION = """@inproceedings{pan2021hvt,
  title     = {Scalable Vision Transformers with Hierarchical Pooling},
  author    = {Pan, Zizheng and Zhuang, Bohan and Liu, Jing and He, Haoyu and Cai, Jianfei},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""


@dataclass
class ConvertResult:
    out_dir: str
    model_name: str
    repo_id: str
    params_m: float
    gmacs: float
    max_abs_diff: float
    source_sha256: str


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _model_kwargs_for(checkpoint: Dict[str, Any], model_name: str) -> Dict[str, Any]:
    """The create_model kwargs (besides the name) that give `model_name` the checkpoint's head, input channels,
    patch and image size, where they differ from the variant's defaults."""
    import timm
    from .checkpoint import CheckpointMismatchError, checkpoint_args, layout_of, unwrap_state_dict

    layout = layout_of({k: v.shape for k, v in unwrap_state_dict(checkpoint).items()})
    if layout.num_tokens is None or layout.patch_size is None:
        raise CheckpointMismatchError('This is not an HVT checkpoint: it has no pos_embed / patch_embed.proj.weight')
    with torch.device('meta'):
        default = timm.create_model(model_name)
    kwargs = {}
    if layout.num_classes != default.num_classes:
        kwargs['num_classes'] = layout.num_classes
    if layout.in_chans != default.in_chans:
        kwargs['in_chans'] = layout.in_chans
    patch = layout.patch_size
    if patch != tuple(default.patch_embed.patch_size):
        kwargs['patch_size'] = patch
    args = checkpoint_args(checkpoint)
    img = args.get('input_size')
    if isinstance(img, int) and (img // patch[0]) * (img // patch[1]) == layout.num_tokens:
        grid = (img // patch[0], img // patch[1])
    else:
        side = math.isqrt(layout.num_tokens)
        if side * side != layout.num_tokens:
            raise CheckpointMismatchError(
                f'Cannot tell the image size of a checkpoint with a {layout.num_tokens}-token pos_embed')
        grid = (side, side)
    img_size = (grid[0] * patch[0], grid[1] * patch[1])
    if img_size != tuple(default.patch_embed.img_size):
        kwargs['img_size'] = img_size
    return kwargs


def _fixed_input(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    height, width = model.patch_embed.img_size
    return torch.randn(1, model.in_chans, height, width, generator=generator)


def format_figure(value: Optional[float], spec: str = '.2f') -> str:
    """`value` formatted, or '-' for a figure that does not exist (e.g. a paper number of an unpublished variant)."""
    return '-' if value is None else format(value, spec)


def model_card(
        model: torch.nn.Module,
        model_name: str,
        repo_id: str,
        params_m: float,
        gmacs: float,
        source: str,
        source_sha256: str,
) -> str:
    """README.md for the hub folder of `model` (with timm's model card metadata)."""
    from .paper import ARXIV_ID, PAPER_RESULTS
    arch = model_name.split('.')[0]
    paper = PAPER_RESULTS.get(arch)
    height, width = model.patch_embed.img_size
    as_released = (
        paper is not None and model.num_classes == 1000 and (height, width) == (224, 224)
        and tuple(model.patch_embed.patch_size) == (16, 16))
    cfg = model.pretrained_cfg
    lines = [
        '---',
        'tags:',
        '- image-classification',
        '- timm',
        '- hvt',
        'library_name: timm',
        f'license: {cfg.get("license") or "apache-2.0"}',
        'datasets:',
        '- imagenet-1k',
        '---',
        f'# Model card for {model_name}',
        '',
        f'{paper.paper_name if paper else arch} image classification model from "Scalable Vision Transformers with '
        f'Hierarchical Pooling" (Pan et al., ICCV 2021), converted to timm\'s layout by timm-hvt.',
        '',
        'HVT is a ViT without class token whose token sequence is max-pooled (1D, stride 2) once per stage; '
        'the head classifies the mean of the last stage\'s tokens.',
        '',
        '## Model details',
        '- **Model type:** image classification / feature backbone',
        f'- **Params (M):** {params_m:.2f}',
        f'- **GMACs:** {gmacs:.2f}',
        f'- **Image size:** {height} x {width}',
        f'- **Classes:** {model.num_classes}',
        f'- **Paper:** [Scalable Vision Transformers with Hierarchical Pooling](https://arxiv.org/abs/{ARXIV_ID})',
        f'- **Original:** {cfg.get("origin_url") or "https://github.com/zhuang-group/HVT"}',
        f'- **Converted from:** `{source}` (sha256 `{source_sha256}`)',
        '',
        '## Results',
        '',
        '| model | params (M) | GMACs | top-1 | top-5 |',
        '|---|---|---|---|---|',
    ]
    if as_released:
        lines.append(
            f'| {model_name} | {params_m:.2f} | {gmacs:.2f} | {format_figure(paper.top1)} | {format_figure(paper.top5)} |')
        lines += ['', f'Top-1 / top-5: ImageNet-1k validation, 224 x 224, as reported in the paper '
                      f'(paper: {paper.params_m:.2f}M params, {paper.gmacs:.2f} GFLOPs counted as MACs).']
    else:
        lines.append(f'| {model_name} | {params_m:.2f} | {gmacs:.2f} | - | - |')
        lines += ['', 'These weights differ from the paper\'s released setup; the paper reports no accuracy for them.']
    lines += [
        '',
        '## Usage',
        '',
        'Needs `pip install timm-hvt`, which registers the HVT architectures with timm.',
        '',
        '```python',
        'import timm',
        'import torch',
        'from PIL import Image',
        '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**data_config, is_training=False)',
        '',
        "img = Image.open('image.jpg').convert('RGB')",
        'with torch.no_grad():',
        '    probs = model(transform(img).unsqueeze(0)).softmax(dim=-1)',
        'top5_prob, top5_class = probs.topk(5)',
        '```',
        '',
        '## Citation',
        '',
        '```bibtex',
        CITATION,
        '```',
        '',
    ]
    return '\n'.join(lines)


def _default_repo_id(model_name: str) -> str:
    from .hvt import HF_HUB_NAMESPACE
    return f'{HF_HUB_NAMESPACE}/{model_name}'


def convert_checkpoint(
        checkpoint_path: str,
        model_name: str,
        out_dir: str,
        repo_id: Optional[str] = None,
        overwrite: bool = False,
) -> ConvertResult:
    """Write the hub folder of `checkpoint_path` as `model_name` to `out_dir`, verified by a reload through timm."""
    import timm
    from timm.models import save_for_hf
    from .checkpoint import CheckpointError, adapt_state_dict, read_checkpoint
    from .flops import count_gmacs, count_params
    from .hvt import HierarchicalVisionTransformer

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f'{out_dir} exists and is not empty (pass --overwrite to replace it)')
    if not timm.is_model(model_name.split('.')[0]):
        raise ValueError(f'Unknown model {model_name!r}; `timm-hvt list` shows the HVT variants')

    checkpoint = read_checkpoint(checkpoint_path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{checkpoint_path} holds a {type(checkpoint).__name__}, not a state dict')
    with torch.device('meta'):  # no random init: every tensor comes from the checkpoint
        model = timm.create_model(model_name, **_model_kwargs_for(checkpoint, model_name)).eval()
    if not isinstance(model, HierarchicalVisionTransformer):
        raise ValueError(f'{model_name!r} is not an HVT model; `timm-hvt list` shows the HVT variants')
    state_dict = {k: v.contiguous() for k, v in adapt_state_dict(checkpoint, model).items()}
    model.load_state_dict(state_dict, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise CheckpointError(f'{checkpoint_path} left parts of {model_name} without weights')
    if not model_name.count('.'):
        tag = model.pretrained_cfg.get('tag')
        model_name = f'{model_name}.{tag}' if tag else model_name
    repo_id = repo_id or _default_repo_id(model_name)
    params_m = count_params(model) / 1e6
    gmacs = count_gmacs(model, (model.in_chans, *model.patch_embed.img_size))

    source_sha256 = _sha256(checkpoint_path)
    x = _fixed_input(model)
    with torch.no_grad():
        expected = model(x)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.', dir=parent)
    try:
        save_for_hf(model, staging, safe_serialization=True)
        card = model_card(
            model, model_name, repo_id, params_m, gmacs,
            source=os.path.basename(checkpoint_path), source_sha256=source_sha256)
        with open(os.path.join(staging, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(card)

        reloaded = timm.create_model(f'local-dir:{staging}', pretrained=True).eval()
        with torch.no_grad():
            diff = (reloaded(x) - expected).abs().max().item()
        if not diff <= LOGITS_ATOL:
            raise RuntimeError(
                f'Verification failed: the model reloaded from the written folder differs from the source checkpoint '
                f'(max abs logits diff {diff:.3g} > {LOGITS_ATOL})')

        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        elif os.path.exists(out_dir):
            os.remove(out_dir)
        os.replace(staging, out_dir)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    return ConvertResult(
        out_dir=out_dir,
        model_name=model_name,
        repo_id=repo_id,
        params_m=params_m,
        gmacs=gmacs,
        max_abs_diff=diff,
        source_sha256=source_sha256,
    )


def check_hub_folder(folder: str) -> List[Tuple[str, int]]:
    """The files (name, bytes) of a hub folder, after checking it is one `timm-hvt convert` would write."""
    import timm
    from .checkpoint import CheckpointReadError

    if not os.path.isdir(folder):
        raise FileNotFoundError(f'No folder {folder}')
    missing = [name for name in HUB_FOLDER_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f'{folder} lacks {", ".join(missing)}; write it with `timm-hvt convert`')
    config_path = os.path.join(folder, 'config.json')
    try:
        with open(config_path, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointReadError(f'{config_path} is not valid JSON ({e})') from e
    arch = config.get('architecture') if isinstance(config, dict) else None
    if not (isinstance(arch, str) and arch.startswith('hvt_') and timm.is_model(arch)):
        raise ValueError(f'{config_path} names architecture {arch!r}, not a registered HVT model')
    weights_path = os.path.join(folder, 'model.safetensors')
    try:
        from safetensors import safe_open
        with safe_open(weights_path, framework='pt') as f:
            f.keys()
    except Exception as e:
        raise CheckpointReadError(f'{weights_path} is truncated or not a safetensors file ({e})') from e
    return [(name, os.path.getsize(os.path.join(folder, name))) for name in HUB_FOLDER_FILES]


def push_folder(
        folder: str,
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Upload HVT weights converted by timm-hvt',
        dry_run: bool = False,
) -> List[Tuple[str, int]]:
    """Upload a hub folder's files to `repo_id` (created if needed); the token comes from the HF environment /
    login. With `dry_run` only check the folder and return what would go up."""
    files = check_hub_folder(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=[name for name, _ in files],
        commit_message=commit_message,
        revision=revision,
    )
    return files
