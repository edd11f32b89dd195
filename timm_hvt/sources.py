"""Where the pretrained weights of the HVT models come from: the Hugging Face Hub repos of this project, else the
authors' release files, and the errors that say which could not be had.

Imports neither timm_hvt.hvt nor the CLI: the model file asks this module for a local file, then timm reads it.
"""
import logging
import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import torch

__all__ = ['HF_HUB_NAMESPACE', 'PretrainedWeightsUnavailable', 'add_note', 'fetch_pretrained', 'reading_weights']

_logger = logging.getLogger(__name__)

HF_HUB_NAMESPACE = os.environ.get('TIMM_HVT_HUB_NAMESPACE') or 'timm-hvt'


class PretrainedWeightsUnavailable(RuntimeError):
    """None of a model's pretrained weight sources could be had."""


def add_note(e: BaseException, note: str) -> None:
    """Name the file an error came from without changing its type or message (Python >= 3.11 shows notes)."""
    if hasattr(e, 'add_note'):
        e.add_note(note)


def fetch_pretrained(cfg: Any, cache_dir: Optional[str] = None) -> str:
    """Local path of the weights `cfg` names: its Hugging Face Hub repo's model.safetensors first (from the HF
    cache when offline), else the authors' release file in torch's hub directory (downloaded there once)."""
    from huggingface_hub import constants, hf_hub_download
    failures = []
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition('@')
        try:
            path = hf_hub_download(
                repo_id, cfg.hf_hub_filename or 'model.safetensors', revision=revision or None, cache_dir=cache_dir)
        except Exception as e:  # missing repo or file, hub unreachable, offline without a cached copy
            failures.append(f'Hugging Face Hub {cfg.hf_hub_id}: {type(e).__name__}: {str(e).strip().splitlines()[0]} '
                            f'[HF cache {cache_dir or constants.HF_HUB_CACHE}]')
        else:
            _logger.info(f'{cfg.architecture}: pretrained weights from the Hugging Face Hub ({cfg.hf_hub_id})')
            return path
    if cfg.url:
        url = cfg.url if isinstance(cfg.url, str) else cfg.url[0]  # timm also takes (url, file name)
        folder = cache_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
        path = os.path.join(folder, url.rsplit('/', 1)[-1])
        try:
            if not os.path.isfile(path):
                if constants.HF_HUB_OFFLINE:
                    raise FileNotFoundError('HF_HUB_OFFLINE is set and the file is not cached')
                os.makedirs(folder, exist_ok=True)
                torch.hub.download_url_to_file(url, path)
        except Exception as e:
            failures.append(f'authors\' release {url}: {type(e).__name__}: {e} [torch hub cache {folder}]')
        else:
            _logger.warning(f'{cfg.architecture}: pretrained weights from the authors\' release {url} (cached at '
                            f'{path}), converted on load. Not from the {failures[0] if failures else "hub: no hub id"}')
            return path
    raise PretrainedWeightsUnavailable(
        f'No pretrained weights for {cfg.architecture} could be had: {" | ".join(failures)}')


def pretrained_file(variant: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """For `create_model(variant, pretrained=True, **kwargs)`: make sure timm will find a local file, fetched before
    the model is built (so a missing source leaves no half-made model). Returns what the weights are read from
    (a file or hub id, for error notes), and points kwargs' pretrained_cfg_overlay at a fetched file."""
    from timm.models import resolve_pretrained_cfg
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if cfg.source in ('hf-hub', 'local-dir') or cfg.file or cfg.state_dict:
        return cfg.file or cfg.hf_hub_id  # an hf-hub: / local-dir: name or a given file: timm loads it as for any model
    if not (cfg.hf_hub_id or cfg.url):
        raise PretrainedWeightsUnavailable(
            f'{variant} has no pretrained weights (the authors released none for it). Use pretrained=False, '
            f'or give a file: pretrained_cfg_overlay=dict(file=...) or checkpoint_path=...')
    path = fetch_pretrained(cfg, kwargs.get('cache_dir'))
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=path)
    return path


@contextmanager
def reading_weights(variant: str, weights: Optional[str], passthrough=()) -> Iterator[None]:
    """Errors raised while building `variant` with the weights of `weights` get a note naming them."""
    try:
        yield
    except Exception as e:
        if weights and not isinstance(e, passthrough):
            add_note(e, f'(while building {variant} with the pretrained weights of {weights})')
        raise
