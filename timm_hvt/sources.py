"""Where the pretrained weights of the HVT models come from: this project's Hugging Face Hub repos, else the authors'
release files, files on disk before the network, and one log line that names the source.

`RELEASED_WEIGHTS` is the one table of the released tags: each tag's hub repo (and the commit to pin, once
published) and the authors' release file (and its sha256, once known; checked on download). Imports neither the
model nor the CLI: the model file asks this module for a local file, then timm reads it.
"""
import hashlib
import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple, Type, Union

__all__ = [
    'HF_HUB_NAMESPACE', 'RELEASED_WEIGHTS', 'PretrainedWeightsUnavailable', 'ReleasedWeights', 'add_note',
    'describe_error', 'fetch_pretrained', 'fetch_release', 'hub_id', 'release_url', 'sha256_of',
]

_logger = logging.getLogger(__name__)

PROJECT_HUB_NAMESPACE = 'timm-hvt'
HF_HUB_NAMESPACE = os.environ.get('TIMM_HVT_HUB_NAMESPACE') or PROJECT_HUB_NAMESPACE
HUB_FILENAME = 'model.safetensors'
RELEASE_URL = 'https://github.com/zhuang-group/HVT/releases/download/{release}'


class ReleasedWeights(NamedTuple):
    release: str  # '<release tag>/<file>' of the authors' GitHub release
    sha256: Optional[str] = None  # of that file, as `timm-hvt publish` prints it; checked on download when known
    hub_revision: Optional[str] = None  # the commit `timm-hvt publish` made in '<namespace>/<tag>', to pin it


# keyed by timm's tagged model name, which is also the hub repo's name under HF_HUB_NAMESPACE
RELEASED_WEIGHTS: Dict[str, ReleasedWeights] = {
    'hvt_ti_1.in1k': ReleasedWeights('v1.0/hvt_ti_1.pth'),
    'hvt_s_0.in1k': ReleasedWeights('v1.0/hvt_s_0.pth'),
    'hvt_s_1.in1k': ReleasedWeights('v1.1/hvt_s_1.pth'),
    'hvt_s_2.in1k': ReleasedWeights('v1.0/hvt_s_2.pth'),
    'hvt_s_3.in1k': ReleasedWeights('v1.0/hvt_s_3.pth'),
    'hvt_s_4.in1k': ReleasedWeights('v1.0/scale_hvt_ti_4.pth'),
}


def hub_id(tag: str) -> str:
    """'<namespace>/<tag>', with '@<commit>' once the project's repo is pinned (not for another namespace)."""
    revision = RELEASED_WEIGHTS[tag].hub_revision if HF_HUB_NAMESPACE == PROJECT_HUB_NAMESPACE else None
    return f'{HF_HUB_NAMESPACE}/{tag}' + (f'@{revision}' if revision else '')


def release_url(tag: str) -> str:
    return RELEASE_URL.format(release=RELEASED_WEIGHTS[tag].release)


def _known_sha256(url: str) -> Optional[str]:
    return next((w.sha256 for tag, w in RELEASED_WEIGHTS.items() if release_url(tag) == url), None)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


class PretrainedWeightsUnavailable(RuntimeError):
    """None of a model's pretrained weight sources could be had, or the file in the cache cannot be read."""


def add_note(e: BaseException, note: str) -> None:
    """Name the file an error came from without changing its type or message (Python >= 3.11 shows notes)."""
    if hasattr(e, 'add_note'):
        e.add_note(note)


def describe_error(e: BaseException) -> str:
    """An error as one line: its type, message and notes."""
    text = ' '.join([*str(e).split(), *' '.join(getattr(e, '__notes__', ())).split()])
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__


def _release_cache(url: str, cache_dir: Optional[str]) -> Tuple[str, str]:
    import torch
    folder = cache_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    return folder, os.path.join(folder, url.rsplit('/', 1)[-1])


def fetch_release(url: str, cache_dir: Optional[str] = None) -> Tuple[str, bool]:
    """The authors' release file of `url` in torch's hub directory (`cache_dir` if given), downloaded there first
    unless it is there already (its sha256 checked when RELEASED_WEIGHTS knows it). Returns (path, downloaded)."""
    import torch
    from huggingface_hub import constants
    folder, path = _release_cache(url, cache_dir)
    if os.path.isfile(path):
        return path, False
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f'HF_HUB_OFFLINE is set and {path} does not exist')
    os.makedirs(folder, exist_ok=True)
    torch.hub.download_url_to_file(url, path, hash_prefix=_known_sha256(url), progress=False)
    return path, True


def _hub_file(cfg: Any, cache_dir: Optional[str], cached_only: bool) -> Optional[str]:
    """The hub repo's file: with `cached_only`, its path in the HF cache or None (asking no server at all)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    repo_id, _, revision = cfg.hf_hub_id.partition('@')
    filename = cfg.hf_hub_filename or HUB_FILENAME
    if cached_only:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or None)
        return path if isinstance(path, str) else None
    return hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir)


def fetch_pretrained(cfg: Any, cache_dir: Optional[str] = None) -> str:
    """Local path of the weights pretrained cfg `cfg` names, from the first of: the hub repo's file in the HF cache,
    the authors' release file in torch's hub cache, a download from the hub, a download of the release file. Logs
    one line (a warning, so that it shows by default) naming the source."""
    from huggingface_hub import constants
    name = f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture
    url = (cfg.url if isinstance(cfg.url, str) else cfg.url[0]) if cfg.url else None  # timm also takes (url, file)
    hf_cache = cache_dir or constants.HF_HUB_CACHE
    release_folder, release_path = _release_cache(url, cache_dir) if url else (None, None)

    path = _hub_file(cfg, cache_dir, cached_only=True) if cfg.hf_hub_id else None
    if path:
        _logger.warning(f'{name}: pretrained weights from the Hugging Face Hub repo {cfg.hf_hub_id}, found in the '
                        f'HF cache ({path})')
        return path
    if url and os.path.isfile(release_path):
        hub = f'; the hub repo {cfg.hf_hub_id} is not in the HF cache {hf_cache}' if cfg.hf_hub_id else ''
        _logger.warning(f"{name}: pretrained weights from the authors' release {url}, found in the torch hub cache "
                        f"({release_path}), converted on load{hub}")
        return release_path

    failures = []
    if cfg.hf_hub_id:
        try:
            path = _hub_file(cfg, cache_dir, cached_only=False)
        except Exception as e:  # missing repo or file, hub unreachable, offline
            failures.append(f'Hugging Face Hub {cfg.hf_hub_id}: {_first_line(e)} [HF cache {hf_cache}]')
        else:
            _logger.warning(f'{name}: pretrained weights from the Hugging Face Hub repo {cfg.hf_hub_id}, downloaded '
                            f'to {path}')
            return path
    if url:
        try:
            path, _ = fetch_release(url, cache_dir)
        except Exception as e:
            failures.append(f"authors' release {url}: {_first_line(e)} [torch hub cache {release_folder}]")
        else:
            hub = f'. Not from the hub: {failures[0]}' if failures else ''
            _logger.warning(f"{name}: pretrained weights from the authors' release {url}, downloaded to {path}, "
                            f"converted on load{hub}")
            return path
    raise PretrainedWeightsUnavailable(f'No pretrained weights for {name} could be had: {" | ".join(failures)}')


class WeightsFile(NamedTuple):
    path: str  # what timm reads: a file, or an hf-hub id
    cached: bool  # fetched by fetch_pretrained into a cache it manages


def pretrained_file(variant: str, kwargs: Dict[str, Any]) -> WeightsFile:
    """For `create_model(variant, pretrained=True, **kwargs)`: make sure timm finds a local file, fetched before the
    model is built (so a missing source leaves no half-made model); kwargs' pretrained_cfg_overlay is pointed at it.
    hf-hub: / local-dir: names, a given file or state dict are left to timm, as for any timm model."""
    from timm.models import resolve_pretrained_cfg
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if cfg.source in ('hf-hub', 'local-dir') or cfg.file or cfg.state_dict:
        return WeightsFile(cfg.file or cfg.hf_hub_id, cached=False)
    if not (cfg.hf_hub_id or cfg.url):
        raise PretrainedWeightsUnavailable(
            f'{variant} has no pretrained weights (the authors released none for it). Use pretrained=False, '
            f'or give a file: pretrained_cfg_overlay=dict(file=...) or checkpoint_path=...')
    path = fetch_pretrained(cfg, kwargs.get('cache_dir'))
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=path)
    return WeightsFile(path, cached=True)


_UNSUPPORTED_GLOBALS = re.compile(r'(?i)unsupported globals?:? (?:GLOBAL )?([\w.]+(?:, [\w.]+)*)')


def _why_unreadable(path: str) -> Optional[str]:
    """None if timm's loader reads `path`, else why not, without the loader's advice to drop weights-only loading."""
    from timm.models import load_state_dict
    try:
        load_state_dict(path)
    except Exception as e:
        found = _UNSUPPORTED_GLOBALS.search(f'{e} {e.__cause__ or ""}')  # torch < 2.6 names it in the cause
        if found:
            return f'{type(e).__name__}: it holds pickled objects that weights-only loading refuses ({found.group(1)})'
        first = _first_line(e)
        return type(e).__name__ if 'weights_only' in first else first
    return None


def _damaged(variant: str, path: str, why: str) -> PretrainedWeightsUnavailable:
    target = os.path.realpath(path)
    files = path if target == path else f'{path} (a link to {target}; delete both)'
    return PretrainedWeightsUnavailable(
        f'The pretrained weights of {variant} in the cache, {path}, cannot be read: the file looks damaged or is not '
        f'a checkpoint ({why}). Delete {files} and it is downloaded again on the next load.')


@contextmanager
def reading_weights(
        variant: str,
        weights: Optional[WeightsFile],
        passthrough: Union[Type[BaseException], Tuple[Type[BaseException], ...]] = (),
) -> Iterator[None]:
    """While building `variant` with `weights`: an error gets a note naming them; if the file came from a cache and
    cannot be read at all, the error says so and how to recover instead."""
    try:
        yield
    except Exception as e:
        if weights is None or isinstance(e, passthrough):
            raise
        why = _why_unreadable(weights.path) if weights.cached else None
        if why:
            raise _damaged(variant, weights.path, why) from None
        add_note(e, f'(while building {variant} with the pretrained weights of {weights.path})')
        raise
