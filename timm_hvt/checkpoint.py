"""Reading checkpoints safely and fitting their state dicts to an HVT model.

Understands the authors' training-script files (a dict with 'model', 'optimizer', ..., 'args'), bare state dicts,
timm training checkpoints and this project's own exports (.safetensors or .pth). Nothing is ever unpickled beyond
tensors, plain containers and `argparse.Namespace` (which the authors' files carry in 'args').
"""
import argparse
import logging
import math
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError

from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import clean_state_dict

__all__ = [
    'CheckpointError', 'CheckpointReadError', 'CheckpointNotFoundError', 'CheckpointUnpicklingError',
    'CheckpointEOFError', 'CheckpointSafetensorError', 'UnsafeCheckpointError', 'CheckpointMismatchError',
    'read_error_naming_file', 'read_checkpoint', 'unwrap_state_dict', 'checkpoint_args', 'slim_checkpoint',
    'HvtLayout', 'layout_of', 'adapt_state_dict', 'fit_on_load',
]

# checkpoint keys holding a state dict, in the order timm's own loader prefers them
STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
HEAD_KEYS = ('head.weight', 'head.bias')
PATCH_KERNEL_KEY = 'patch_embed.proj.weight'
MAX_KEYS_SHOWN = 6

_logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be used."""


class CheckpointReadError(CheckpointError):
    """A checkpoint file is missing, truncated, corrupt or of an unknown format."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
    """There is no checkpoint file at the given path."""


class CheckpointUnpicklingError(CheckpointReadError, pickle.UnpicklingError):
    """A checkpoint file's pickle data could not be read."""


class CheckpointEOFError(CheckpointReadError, EOFError):
    """A checkpoint file ended before its data did (empty or truncated)."""


class CheckpointSafetensorError(CheckpointReadError, SafetensorError):
    """A .safetensors file could not be read."""


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint file would need arbitrary code to unpickle; it was refused."""


class CheckpointMismatchError(CheckpointError):
    """A state dict belongs to another architecture than the model it is loaded into."""


def first_line(e: BaseException) -> str:
    """'ErrorType: first line of its message', for one-line reports of an error."""
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0]}' if text else type(e).__name__


# errors of reading a checkpoint file: (its type, the CheckpointReadError subclass of that type that names the file,
# a message for when the original has none)
_READ_ERRORS = (
    (FileNotFoundError, CheckpointNotFoundError, 'no such file'),
    (EOFError, CheckpointEOFError, 'the file ends early (empty or truncated)'),
    (pickle.UnpicklingError, CheckpointUnpicklingError, ''),
    (RuntimeError, CheckpointReadError, ''),  # torch's zip reader; timm's weights_only refusal
    (SafetensorError, CheckpointSafetensorError, ''),
)


def read_error_naming_file(e: BaseException, path: Any) -> Optional[CheckpointReadError]:
    """For an error of reading the checkpoint file at `path`: a CheckpointReadError that is also of the original's
    type, whose message is the path followed by the original's message. None for any other error, which should
    propagate as it is. Raise the result `from e`."""
    if isinstance(e, CheckpointError):
        return None
    for base, named, default in _READ_ERRORS:
        if isinstance(e, base):
            return named(f'Cannot read checkpoint {path}: {str(e).strip() or default or type(e).__name__}')
    return None


def _unsafe_globals(path: str) -> List[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def read_checkpoint(path: Union[str, os.PathLike]) -> Any:
    """Read a .safetensors or PyTorch checkpoint file without running any code stored in it.

    PyTorch files are loaded with `weights_only=True`, allowing `argparse.Namespace` as the only extra type.
    Errors name the file: CheckpointNotFoundError (a FileNotFoundError), UnsafeCheckpointError, CheckpointReadError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f'No checkpoint file at {path}')
    if path.endswith('.safetensors'):
        import safetensors.torch
        try:
            return safetensors.torch.load_file(path, device='cpu')
        except Exception as e:
            raise CheckpointReadError(f'{path} is truncated or not a safetensors file ({first_line(e)})') from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UnsafeCheckpointError(
                f'Refused to load {path}: unpickling it would import {", ".join(unsafe)}, which could run '
                f'arbitrary code. Only tensors, plain containers and argparse.Namespace are allowed.') from e
        raise CheckpointReadError(f'{path} is truncated or not a PyTorch checkpoint ({first_line(e)})') from e
    except Exception as e:
        raise CheckpointReadError(f'{path} is truncated or not a PyTorch checkpoint ({first_line(e)})') from e


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors of the state dict inside a checkpoint, without 'module.' / '_orig_mod.' prefixes."""
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    return clean_state_dict({k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)})


def checkpoint_args(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The training arguments an authors' checkpoint carries in 'args' (empty if none)."""
    args = checkpoint.get('args')
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def slim_checkpoint(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """Only what loading needs: the state dict, plus the training args when there are any."""
    state_dict = unwrap_state_dict(checkpoint)
    args = checkpoint_args(checkpoint)
    return {'model': state_dict, 'args': argparse.Namespace(**args)} if args else state_dict


@dataclass(frozen=True)
class HvtLayout:
    """What the shapes of an HVT state dict tell about its architecture (None: not in the state dict)."""
    embed_dim: Optional[int]
    depth: Optional[int]
    pool_blocks: Tuple[int, ...]
    mlp_hidden: Optional[int]
    class_token: bool
    in_chans: Optional[int]
    patch_size: Optional[Tuple[int, int]]
    num_tokens: Optional[int]
    num_classes: int

    def summary(self) -> str:
        text = f'embed_dim {self.embed_dim}, {self.depth} blocks, pooling after blocks {list(self.pool_blocks)}'
        if self.mlp_hidden is not None and self.embed_dim and self.mlp_hidden != 4 * self.embed_dim:
            text += f', mlp hidden {self.mlp_hidden}'
        if self.class_token:
            text += ', class token'
        return text

    def variant(self) -> Optional[str]:
        """The registered HVT variant these shapes belong to, if any."""
        from .hvt import pool_block_indices
        size = {192: 'ti', 384: 's'}.get(self.embed_dim)
        if size is None or self.depth != 12 or self.mlp_hidden != 4 * self.embed_dim or self.class_token:
            return None
        stages = len(self.pool_blocks)
        if self.pool_blocks != pool_block_indices(12, num_pool_stages=stages):
            return None
        return f'hvt_{size}_{stages}'


def _block_index(key: str) -> Optional[int]:
    parts = key.split('.')
    if len(parts) > 2 and parts[0] == 'blocks' and parts[1].isdigit():
        return int(parts[1])
    return None


def layout_of(shapes: Mapping[str, Sequence[int]]) -> HvtLayout:
    """Read the architecture off the key names and shapes of a state dict."""
    def dim(key: str, axis: int) -> Optional[int]:
        return int(shapes[key][axis]) if key in shapes else None

    blocks = [i for i in map(_block_index, shapes) if i is not None]
    kernel = shapes.get(PATCH_KERNEL_KEY)
    return HvtLayout(
        embed_dim=dim('pos_embed', -1) or dim(PATCH_KERNEL_KEY, 0) or dim('norm.weight', 0),
        depth=max(blocks) + 1 if blocks else None,
        pool_blocks=tuple(sorted(i for i in set(blocks) if f'blocks.{i}.pos_embed' in shapes)),
        mlp_hidden=dim('blocks.0.mlp.fc1.weight', 0),
        class_token='cls_token' in shapes,
        in_chans=int(kernel[1]) if kernel is not None else None,
        patch_size=(int(kernel[2]), int(kernel[3])) if kernel is not None else None,
        num_tokens=dim('pos_embed', 1),
        num_classes=dim('head.weight', 0) or 0,
    )


def _shape(t: Sequence[int]) -> str:
    return str(tuple(int(s) for s in t))


def _list_keys(entries: List[str]) -> str:
    shown = '; '.join(entries[:MAX_KEYS_SHOWN])
    more = len(entries) - MAX_KEYS_SHOWN
    return shown + (f'; ... and {more} more' if more > 0 else '')


def _model_name(model: torch.nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


class _Fitter:
    """Checks a state dict against a model's own state dict shapes and resamples what a size change explains."""

    def __init__(
            self,
            model: torch.nn.Module,
            target: Mapping[str, Sequence[int]],
            interpolation: str = 'bicubic',
            antialias: bool = True,
    ) -> None:
        self.model = model
        self.target = target
        self.interpolation = interpolation
        self.antialias = antialias

    def check_architecture(self, state_dict: Mapping[str, torch.Tensor], args: Mapping[str, Any], full: bool) -> None:
        """Raise CheckpointMismatchError if `state_dict` comes from another architecture than the model.

        `full`: the state dict claims to be complete, so block count, pooling stages and class token count too.
        """
        if 'pos_embed' not in state_dict and not any(_block_index(k) is not None for k in state_dict):
            if full:
                raise CheckpointMismatchError(
                    f'This is not an HVT checkpoint: it has neither pos_embed nor blocks.* '
                    f'(keys: {_list_keys(list(state_dict))})')
            return
        src = layout_of({k: v.shape for k, v in state_dict.items()})
        dst = layout_of(self.target)
        fields = ['embed_dim', 'mlp_hidden']
        if full:
            fields += ['depth', 'pool_blocks', 'class_token']
        problems = [
            f'{f} {getattr(src, f)} in the checkpoint vs {getattr(dst, f)} in the model'
            for f in fields if getattr(src, f) is not None and getattr(src, f) != getattr(dst, f)]
        problems += self._args_problems(args)
        if not problems:
            return
        like = src.variant()
        raise CheckpointMismatchError(
            f'Checkpoint does not fit {_model_name(self.model)}: it holds an HVT with {src.summary()}'
            f'{f" (like {like})" if like else ""}, the model has {dst.summary()}. '
            f'Mismatch: {"; ".join(problems)}. '
            f'Offending keys: {_list_keys(self._offending(state_dict, with_missing=full))}')

    def _args_problems(self, args: Mapping[str, Any]) -> List[str]:
        # what only the authors' training args tell: shapes don't show head count or pool kernel / stride
        blk = self.model.blocks[0] if len(getattr(self.model, 'blocks', ())) else None
        model_values = {
            'num_heads': getattr(getattr(blk, 'attn', None), 'num_heads', None),
            'pool_kernel_size': getattr(self.model, 'pool_kernel_size', None),
            'pool_stride': getattr(self.model, 'pool_stride', None),
        }
        return [
            f'{name} {args[name]} in the checkpoint args vs {value} in the model'
            for name, value in model_values.items()
            if value is not None and args.get(name) is not None and args[name] != value]

    def _offending(self, state_dict: Mapping[str, torch.Tensor], with_missing: bool = True) -> List[str]:
        entries = [
            f'{k} {_shape(v.shape)} vs {_shape(self.target[k])}'
            for k, v in state_dict.items() if k in self.target and tuple(v.shape) != tuple(self.target[k])]
        entries += [f'{k} unexpected' for k in state_dict if k not in self.target]
        if with_missing:
            entries += [f'{k} missing' for k in self.target if k not in state_dict]
        return entries

    def source_grid(self, num_tokens: int, args: Mapping[str, Any]) -> Tuple[int, int]:
        side = math.isqrt(num_tokens)
        if side * side == num_tokens:
            return side, side
        img, patch = args.get('input_size'), args.get('patch_size')
        if isinstance(img, int) and isinstance(patch, int) and patch > 0 and (img // patch) ** 2 == num_tokens:
            return img // patch, img // patch
        cfg = getattr(self.model, 'pretrained_cfg', None) or {}
        kernel = self.target.get(PATCH_KERNEL_KEY)
        if cfg.get('input_size') and kernel is not None:
            grid = (cfg['input_size'][1] // kernel[2], cfg['input_size'][2] // kernel[3])
            if grid[0] * grid[1] == num_tokens:
                return grid
        raise CheckpointMismatchError(
            f'Cannot tell the patch grid of the checkpoint\'s {num_tokens}-token pos_embed to resample it to '
            f'{_model_name(self.model)}\'s {_shape(self.target["pos_embed"])}')

    def resample(
            self,
            state_dict: Dict[str, torch.Tensor],
            args: Mapping[str, Any],
    ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
        """Resample the patch kernel and every position embedding to the model's patch and image size.

        Returns the new state dict and what was resampled ('key (old shape) -> (new shape)')."""
        from .hvt import resample_pos_embed_1d
        out = dict(state_dict)
        kernel, target_kernel = out.get(PATCH_KERNEL_KEY), self.target.get(PATCH_KERNEL_KEY)
        if kernel is not None and target_kernel is not None and tuple(kernel.shape[-2:]) != tuple(target_kernel[-2:]):
            out[PATCH_KERNEL_KEY] = resample_patch_embed(
                kernel, list(target_kernel[-2:]), interpolation=self.interpolation, antialias=self.antialias)
        pos, target_pos = out.get('pos_embed'), self.target.get('pos_embed')
        if pos is not None and target_pos is not None and pos.shape[1] != target_pos[1]:
            out['pos_embed'] = resample_abs_pos_embed(
                pos,
                new_size=list(self.model.patch_embed.grid_size),
                old_size=list(self.source_grid(pos.shape[1], args)),
                num_prefix_tokens=0,
                interpolation=self.interpolation,
                antialias=self.antialias,
            )
        for k, v in state_dict.items():
            if k != 'pos_embed' and k.endswith('.pos_embed') and k in self.target and v.shape[1] != self.target[k][1]:
                out[k] = resample_pos_embed_1d(v, int(self.target[k][1]))
        changes = [
            f'{k} {_shape(state_dict[k].shape)} -> {_shape(v.shape)}' for k, v in out.items() if v is not state_dict[k]]
        return out, changes


def _mismatch_hint(key: str, got: Sequence[int], want: Sequence[int]) -> str:
    if key in HEAD_KEYS:
        return f'the checkpoint has a {got[0]}-class head, the model {want[0]} classes (pass num_classes={got[0]})'
    if key == PATCH_KERNEL_KEY and tuple(got[2:]) == tuple(want[2:]):
        return f'the checkpoint takes {got[1]} input channels, the model {want[1]} (pass in_chans={got[1]})'
    return f'{key} {_shape(got)} vs {_shape(want)}'


def adapt_state_dict(
        checkpoint: Mapping[str, Any],
        model: torch.nn.Module,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> Dict[str, torch.Tensor]:
    """Fit a checkpoint to `model` for timm's pretrained loading (the model's checkpoint_filter_fn).

    Unwraps the authors' / timm's training files, checks the architecture (CheckpointMismatchError naming the
    difference and the keys), and resamples position embeddings (2D for the patch grid, 1D for each pooled
    stage) and the patch kernel to the model's image and patch size. A head of another class count and a patch
    kernel of the pretrained cfg's channel count are passed on as they are: timm's loader drops / adapts them.
    """
    args = checkpoint_args(checkpoint)
    state_dict = unwrap_state_dict(checkpoint)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fitter = _Fitter(model, target, interpolation=interpolation, antialias=antialias)
    fitter.check_architecture(state_dict, args, full=True)
    state_dict, changes = fitter.resample(state_dict, args)
    if changes:
        _logger.info(f'Resampled the checkpoint for {_model_name(model)}: {"; ".join(changes)}')

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    head_left_to_timm = getattr(model, 'num_classes', None) != cfg.get('num_classes')
    cfg_in_chans = (cfg.get('input_size') or (3,))[0]
    problems = []
    for k, v in state_dict.items():
        want = target.get(k)
        if want is None or tuple(v.shape) == want:
            continue
        if k in HEAD_KEYS and head_left_to_timm:
            continue
        if k == PATCH_KERNEL_KEY and v.shape[1] == cfg_in_chans and tuple(v.shape[2:]) == want[2:]:
            continue  # timm adapts the channels of first_conv
        problems.append(_mismatch_hint(k, v.shape, want))
    missing = [k for k in target if k not in state_dict and not (k in HEAD_KEYS and head_left_to_timm)]
    unexpected = [k for k in state_dict if k not in target and not (k in HEAD_KEYS and head_left_to_timm)]
    problems += [f'{k} missing' for k in missing] + [f'{k} unexpected' for k in unexpected]
    if problems:
        raise CheckpointMismatchError(
            f'Checkpoint does not fit {_model_name(model)}: {_list_keys(problems)}')
    return state_dict


def _caller_strict(default: bool) -> bool:
    """The `strict` argument of the `Module.load_state_dict` call a load_state_dict pre-hook runs in.

    torch hands every module's hooks strict=True whatever the caller asked for (and raises for missing keys only
    after copying everything else), so the hook reads the caller's choice from that call's frame; `default` when
    the hook runs outside one (someone calling `_load_from_state_dict` directly)."""
    code = torch.nn.Module.load_state_dict.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get('strict', default))
        frame = frame.f_back
    return default


def fit_on_load(
        module: torch.nn.Module,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
) -> None:
    """`load_state_dict` pre-hook of every HVT: resample size-dependent tensors in place (logging a warning that
    names each), and fail with a clear message (instead of torch's size-mismatch list) when the state dict belongs
    to another architecture or, with strict=True, lacks or adds keys. Every check runs before torch copies
    anything, so a failed load leaves the model as it was."""
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    if not own:
        return
    strict = _caller_strict(strict)
    target = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    fitter = _Fitter(module, target)
    fitter.check_architecture(own, {}, full=strict)
    fitted, changes = fitter.resample(own, {})
    problems = [
        _mismatch_hint(k, v.shape, target[k])
        for k, v in fitted.items() if k in target and tuple(v.shape) != target[k]]
    if strict:
        problems += [f'{k} missing' for k in target if k not in fitted]
        problems += [f'{k} unexpected' for k in fitted if k not in target]
    if problems:
        raise CheckpointMismatchError(f'State dict does not fit {_model_name(module)}: {_list_keys(problems)}')
    if changes:
        _logger.warning(f'Resampled the state dict loaded into {_model_name(module)}: {"; ".join(changes)}')
    for k, v in fitted.items():
        if v is not own[k]:
            state_dict[prefix + k] = v
