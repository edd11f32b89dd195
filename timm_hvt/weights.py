"""Where HVT's pretrained weights come from, in order:

1. the Hugging Face Hub repo of the pretrained cfg (`hf_hub_id`): model.safetensors in timm's layout, else
   pytorch_model.bin (the file names and their order are timm's);
2. if that repo / file does not exist or the hub cannot be reached, the authors' release checkpoint (`url`),
   downloaded into the torch hub cache and converted on load by the model's checkpoint filter.

Local files (`pretrained_cfg_overlay=dict(file=...)`, `local-dir:` names) are read directly; in a folder the file
is chosen as timm's `local-dir:` loader chooses it. Every file is read by `read_checkpoint`, which never unpickles
code. `HF_HUB_OFFLINE=1` uses whatever either cache holds.

The weights are fetched before the model is built and handed to timm's own loader as the cfg's `state_dict`,
so timm still adapts `in_chans` / `num_classes` and no half-loaded model is ever returned.
"""
import dataclasses
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from huggingface_hub.errors import EntryNotFoundError
from torch import nn

from timm.models import _builder, _factory, _helpers, _hub
from timm.models._hub import check_cached_file, download_cached_file, download_from_hf, hf_split
from timm.models._pretrained import PretrainedCfg
from timm.models._registry import get_pretrained_cfg, list_pretrained

from .checkpoint import (
    CheckpointError, CheckpointReadError, first_line, read_checkpoint, read_error_naming_file, slim_checkpoint,
)

__all__ = [
    'HF_WEIGHTS_FILE', 'PretrainedWeightsUnavailable', 'HubFallbackCfg', 'fetch_pretrained', 'prepare_pretrained',
    'finish_model', 'hub_weights_files', 'find_weights_file', 'release_cfg_for_hub_id', 'install_timm_hooks',
]

_logger = logging.getLogger(__name__)

HF_WEIGHTS_FILE = _hub.HF_SAFE_WEIGHTS_NAME  # model.safetensors: what `timm-hvt convert` writes


class PretrainedWeightsUnavailable(RuntimeError):
    """No source of a model's pretrained weights could be used."""


@dataclasses.dataclass
class HubFallbackCfg(PretrainedCfg):
    """The registered cfg standing in for the config.json of an `hf-hub:` name of this project that could not be
    had. `hub_unavailable` says why, so the weights fetch of the same build goes straight to the release fallback
    instead of asking the hub again. The note lives and dies with this cfg object; `to_dict` (which becomes the
    model's `pretrained_cfg`) leaves it out."""
    hub_unavailable: Optional[str] = None

    def to_dict(self, remove_source: bool = False, remove_null: bool = True) -> Dict[str, Any]:
        out = super().to_dict(remove_source=remove_source, remove_null=remove_null)
        out.pop('hub_unavailable', None)
        return out


def _hf_cache_dir(cache_dir: Optional[str]) -> str:
    from huggingface_hub import constants
    return str(cache_dir or constants.HF_HUB_CACHE)


def _torch_cache_dir(cache_dir: Optional[str]) -> str:
    return str(cache_dir or os.path.join(torch.hub.get_dir(), 'checkpoints'))


def _hub_offline() -> bool:
    from huggingface_hub import constants
    is_offline = getattr(constants, 'is_offline_mode', None)
    return bool(is_offline() if callable(is_offline) else constants.HF_HUB_OFFLINE)


def release_cfg_for_hub_id(hub_id: str) -> Optional[PretrainedCfg]:
    """The registered HVT pretrained cfg whose `hf_hub_id` is `hub_id` (any '@revision' ignored)."""
    repo_id = hf_split(hub_id)[0]
    for name in list_pretrained('hvt_*'):
        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.hf_hub_id and hf_split(cfg.hf_hub_id)[0] == repo_id:
            return cfg
    return None


def find_weights_file(path: str) -> str:
    """`path` itself, or for a folder the weights file in it, chosen as timm's `local-dir:` loader chooses: the
    first of timm's preferred names (model.safetensors first), else the first file of timm's first extension
    present, with a warning naming the others when there are several."""
    if not os.path.isdir(path):
        return path
    for name in _hub._PREFERRED_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    for ext in _hub._EXT_PRIORITY:
        found = sorted(f for f in os.listdir(path) if f.endswith(ext) and os.path.isfile(os.path.join(path, f)))
        if len(found) > 1:
            _logger.warning(
                f'{len(found)} {ext} checkpoints in {path}: {", ".join(found)}. Loading {found[0]}; '
                f'pass the file itself to load another.')
        if found:
            return os.path.join(path, found[0])
    raise CheckpointReadError(f'No weights file ({", ".join(_hub._EXT_PRIORITY)}) in folder {path}')


def hub_weights_files(filename: Optional[str] = None) -> Tuple[str, ...]:
    """The files of a hub repo to try for its weights, in order. As in timm: `filename` defaults to
    pytorch_model.bin, and its .safetensors alternative (model.safetensors for the default) comes first."""
    filename = filename or _hub.HF_WEIGHTS_NAME
    if filename.endswith('.safetensors'):
        return filename,
    return (*_hub._get_safe_alternatives(filename), filename)


def _from_hub(hub_id: str, filenames: Tuple[str, ...], cache_dir: Optional[str]) -> str:
    """Local path of the first of `filenames` that hub repo `hub_id` has, downloaded or from the HF cache."""
    for filename in filenames[:-1]:
        try:
            return download_from_hf(hub_id, filename, cache_dir=cache_dir)
        except EntryNotFoundError:  # also raised offline / unreachable when the file is not in the HF cache
            pass
    return download_from_hf(hub_id, filenames[-1], cache_dir=cache_dir)


def _from_url(url: Union[str, Tuple[str, str]], cache_dir: Optional[str]) -> str:
    """Local path of the release file at `url`, from the torch hub cache or downloaded into it."""
    if check_cached_file(url, check_hash=False, cache_dir=cache_dir):
        return download_cached_file(url, check_hash=False, cache_dir=cache_dir)
    if _hub_offline():
        raise FileNotFoundError('offline (HF_HUB_OFFLINE is set) and not in the torch hub cache')
    return download_cached_file(url, check_hash=False, progress=_builder._DOWNLOAD_PROGRESS, cache_dir=cache_dir)


def fetch_pretrained(cfg: PretrainedCfg, cache_dir: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Read the weights `cfg` points to, falling back from the hub to the authors' release.

    Returns None when the cfg already carries an in-memory state dict. Raises PretrainedWeightsUnavailable when
    no source can be had, CheckpointError when a file was found but cannot be read safely.
    """
    name = cfg.architecture or 'this model'
    if cfg.state_dict and cfg.source not in ('hf-hub', 'local-dir'):
        return None
    if cfg.source == 'local-dir' or (cfg.file and cfg.source != 'hf-hub'):
        return slim_checkpoint(read_checkpoint(find_weights_file(os.fspath(cfg.file))))

    hub_id = cfg.hf_hub_id
    url = cfg.url
    if not url and hub_id:
        release = release_cfg_for_hub_id(hub_id)
        url = release.url if release is not None else None
    if not hub_id and not url:
        raise PretrainedWeightsUnavailable(
            f'{name} has no pretrained weights: its authors released none for this variant. Use pretrained=False, '
            f'or load your own with pretrained_cfg_overlay=dict(file=...) or checkpoint_path=...')

    failures = []
    if hub_id:
        filenames = hub_weights_files(cfg.hf_hub_filename)
        hub_unavailable = getattr(cfg, 'hub_unavailable', None)
        try:
            if hub_unavailable:
                raise FileNotFoundError(hub_unavailable)
            path = _from_hub(hub_id, filenames, cache_dir)
        except Exception as e:
            failures.append(
                f'Hugging Face Hub {hub_id} ({", ".join(filenames)}): {first_line(e)} '
                f'[HF cache: {_hf_cache_dir(cache_dir)}]')
        else:
            return slim_checkpoint(read_checkpoint(path))
    if url:
        shown_url = url if isinstance(url, str) else url[0]  # timm also takes (url, cache filename)
        if failures:
            _logger.warning(
                f'Pretrained weights for {name} are not available from the Hugging Face Hub ({hub_id}); '
                f'falling back to the authors\' release checkpoint {shown_url}, converted on load.')
        try:
            path = _from_url(url, cache_dir)
        except Exception as e:
            failures.append(
                f'authors\' release {shown_url}: {first_line(e)} [torch hub cache: {_torch_cache_dir(cache_dir)}]')
        else:
            return slim_checkpoint(read_checkpoint(path))
    else:
        failures.append('no authors\' release URL to fall back to')
    raise PretrainedWeightsUnavailable(f'No pretrained weights for {name} could be had. ' + ' | '.join(failures))


def prepare_pretrained(variant: str, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Fetch the weights before the model is built.

    Returns the model kwargs, whose pretrained cfg now carries the weights for timm's build_model_with_cfg to load
    (and adapt), and the cfg entries `finish_model` restores once they are loaded.
    """
    kwargs = dict(kwargs)
    cfg = _builder.resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.pop('pretrained_cfg', None),
        pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None),
    )
    origin = dict(source=cfg.source)
    checkpoint = fetch_pretrained(cfg, cache_dir=kwargs.get('cache_dir'))
    if checkpoint is not None:
        # a cfg source of 'hf-hub' / 'local-dir' would make timm load from there instead of the state dict
        cfg = dataclasses.replace(cfg, state_dict=checkpoint, source=None)
    kwargs['pretrained_cfg'] = cfg
    return kwargs, origin


def finish_model(model: nn.Module, origin: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Drop the loaded weights from every pretrained cfg on `model` and restore the cfg's source."""
    for module in model.modules():
        cfg = getattr(module, 'pretrained_cfg', None)
        if isinstance(cfg, dict) and cfg.pop('state_dict', None) is not None and origin:
            cfg.update({k: v for k, v in origin.items() if v is not None})
    return model


def _is_hub_unavailable(e: BaseException) -> bool:
    return not isinstance(e, (CheckpointError, ValueError, TypeError, KeyError))


def _hub_config_with_release_fallback(load_config: Callable) -> Callable:
    """Wrap timm's `load_model_config_from_hf` so `hf-hub:` names of this project's repos still resolve (to the
    registered cfg) when the repo is missing or the hub unreachable; the weights then come from the fallback."""
    def load_model_config_from_hf(model_id: str, *args, **kwargs) -> Tuple[Any, str, Dict[str, Any]]:
        try:
            return load_config(model_id, *args, **kwargs)
        except Exception as e:
            release = release_cfg_for_hub_id(model_id)
            if release is None or not _is_hub_unavailable(e):
                raise
            _logger.info(f'config.json of {model_id} not available ({first_line(e)}); using the registered cfg')
            pretrained_cfg = HubFallbackCfg(**dict(
                release.to_dict(), hf_hub_id=model_id, source='hf-hub', hub_unavailable=first_line(e)))
            return pretrained_cfg, release.architecture, {}

    load_model_config_from_hf.timm_hvt_wrapped = load_config
    return load_model_config_from_hf


def _load_state_dict_naming_file(load_state_dict: Callable) -> Callable:
    """Wrap timm's `load_state_dict` (behind `load_checkpoint`, `checkpoint_path=`, `--initial-checkpoint`, for
    every timm model) so a missing, truncated, corrupt or refused file fails naming it: timm's / torch's own error,
    its message kept whole after the file name, chained to it, as a CheckpointReadError that is also of the
    original's type. Any other error, and loading itself, are left as they are; the file is read once."""
    def load_state_dict_naming_file(checkpoint_path, *args, **kwargs):
        try:
            return load_state_dict(checkpoint_path, *args, **kwargs)
        except Exception as e:
            named = read_error_naming_file(e, checkpoint_path)
            if named is None:
                raise
            raise named from e

    load_state_dict_naming_file.timm_hvt_wrapped = load_state_dict
    return load_state_dict_naming_file


def install_timm_hooks() -> None:
    """Wrap the two timm functions above (once; later calls are no-ops)."""
    if not hasattr(_factory.load_model_config_from_hf, 'timm_hvt_wrapped'):
        _factory.load_model_config_from_hf = _hub_config_with_release_fallback(_factory.load_model_config_from_hf)
    if not hasattr(_helpers.load_state_dict, 'timm_hvt_wrapped'):
        _helpers.load_state_dict = _load_state_dict_naming_file(_helpers.load_state_dict)
