"""Where the pretrained weights of the HVT models come from, for `create_model(..., pretrained=True)`.

A tag's weights come from its Hugging Face Hub repo only where the package pins that repo's revision (the
`@<commit>` of its `hf_hub_id` in `hvt.default_cfgs`) or the user names their own namespace
(`TIMM_HVT_HUB_NAMESPACE`); otherwise, and when the hub has nothing, from the authors' release file, checked
against its sha256 where `hvt.RELEASE_SHA256` knows it. Files on disk are used before the network; one log line
names the source. `hf-hub:` and `local-dir:` names, a given file or state dict are left to timm.
"""
import hashlib
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from .errors import CheckpointMismatchError, PretrainedWeightsUnavailable, add_note, first_line

__all__ = [
    'HUB_NAMESPACE_ENV', 'PROJECT_HUB_NAMESPACE', 'HubRepo', 'fetch_release', 'hub_repo', 'pretrained_weights',
    'sha256_of',
]

_logger = logging.getLogger(__name__)

PROJECT_HUB_NAMESPACE = 'timm-hvt'
HUB_NAMESPACE_ENV = 'TIMM_HVT_HUB_NAMESPACE'  # the user's own namespace: its repos are used unpinned
HUB_FILENAME = 'model.safetensors'


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _release_path(url: str, cache_dir: Optional[str]) -> str:
    import torch
    return os.path.join(cache_dir or os.path.join(torch.hub.get_dir(), 'checkpoints'), url.rsplit('/', 1)[-1])


def _check_sha256(path: str, sha256: Optional[str], what: str) -> None:
    if sha256 is None:
        return
    found = sha256_of(path)
    if found != sha256:
        raise PretrainedWeightsUnavailable(
            f'{path} ({what}) has sha256 {found}, but the release file has {sha256}. Delete {path}; it is '
            f'downloaded again on the next load.')


def fetch_release(url: str, sha256: Optional[str] = None, cache_dir: Optional[str] = None) -> Tuple[str, bool]:
    """The authors' release file `url` in torch's hub cache (or `cache_dir`), downloaded there unless present; a
    known `sha256` is checked on the cached file and on the download (a mismatched download is not kept). Returns
    (path, downloaded)."""
    import torch
    from huggingface_hub import constants
    path = _release_path(url, cache_dir)
    if os.path.isfile(path):
        _check_sha256(path, sha256, 'in the torch hub cache')
        return path, False
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f'HF_HUB_OFFLINE is set and {path} does not exist')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=os.path.basename(path) + '.', suffix='.part', dir=os.path.dirname(path))
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, part, progress=False)
        _check_sha256(part, sha256, f'downloaded from {url}')
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.remove(part)
    return path, True


class HubRepo(NamedTuple):
    repo_id: str
    revision: Optional[str]  # None: the repo's main branch, unpinned

    def __str__(self) -> str:
        return f'{self.repo_id}@{self.revision}' if self.revision else f'{self.repo_id} (unpinned)'


def hub_repo(cfg: Any) -> Optional[HubRepo]:
    """The hub repo the default route may take a tag's weights from: the user's namespace when
    TIMM_HVT_HUB_NAMESPACE names one (pinned or not), else the cfg's repo only where its revision is pinned."""
    if not cfg.hf_hub_id:
        return None
    repo_id, _, revision = cfg.hf_hub_id.partition('@')
    namespace = os.environ.get(HUB_NAMESPACE_ENV)
    if namespace and namespace != repo_id.split('/')[0]:
        return HubRepo(f'{namespace}/{repo_id.split("/", 1)[1]}', None)
    return HubRepo(repo_id, revision) if revision or namespace else None


def _hub_file(repo: HubRepo, filename: str, cache_dir: Optional[str], cached_only: bool) -> Optional[str]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    if cached_only:  # asks no server at all
        path = try_to_load_from_cache(repo.repo_id, filename, cache_dir=cache_dir, revision=repo.revision)
        return path if isinstance(path, str) else None
    return hf_hub_download(repo.repo_id, filename, revision=repo.revision, cache_dir=cache_dir)


def _fetch(cfg: Any, release_sha256: Mapping[str, Optional[str]], cache_dir: Optional[str]) -> str:
    """The first of: the hub repo's file in the HF cache, the release file in torch's hub cache, a hub download, a
    release download. Logs one line, at WARNING so that it shows by default, naming the source."""
    from huggingface_hub import constants
    name = f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture
    url = (cfg.url if isinstance(cfg.url, str) else cfg.url[0]) if cfg.url else None  # timm also takes (url, file)
    sha256 = release_sha256.get(name)
    repo = hub_repo(cfg)
    filename = cfg.hf_hub_filename or HUB_FILENAME
    hf_cache = cache_dir or constants.HF_HUB_CACHE

    path = _hub_file(repo, filename, cache_dir, cached_only=True) if repo else None
    if path:
        _logger.warning(f'{name}: pretrained weights from the Hugging Face Hub repo {repo}, found in the HF cache '
                        f'({path})')
        return path
    release_path = _release_path(url, cache_dir) if url else None
    if release_path and os.path.isfile(release_path):
        _check_sha256(release_path, sha256, 'in the torch hub cache')
        hub = f'; the hub repo {repo} is not in the HF cache {hf_cache}' if repo else ''
        _logger.warning(f"{name}: pretrained weights from the authors' release {url}, found in the torch hub cache "
                        f"({release_path}), converted on load{hub}")
        return release_path

    failures: List[str] = []
    if repo:
        try:
            path = _hub_file(repo, filename, cache_dir, cached_only=False)
        except Exception as e:  # missing repo or file, hub unreachable, offline
            failures.append(f'Hugging Face Hub {repo}: {first_line(e)} [HF cache {hf_cache}]')
        else:
            _logger.warning(f'{name}: pretrained weights from the Hugging Face Hub repo {repo}, downloaded to {path}')
            return path
    if url:
        try:
            path, _ = fetch_release(url, sha256, cache_dir)
        except PretrainedWeightsUnavailable:
            raise
        except Exception as e:
            where = os.path.dirname(release_path)
            failures.append(f"authors' release {url}: {first_line(e)} [torch hub cache {where}]")
        else:
            hub = f'. Not from the hub: {failures[0]}' if failures else ''
            _logger.warning(f"{name}: pretrained weights from the authors' release {url}, downloaded to {path}, "
                            f"converted on load{hub}")
            return path
    raise PretrainedWeightsUnavailable(f'No pretrained weights for {name} could be had: {" | ".join(failures)}')


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
        first = first_line(e)
        return type(e).__name__ if 'weights_only' in first else first
    return None


def _damaged(variant: str, path: str, why: str) -> PretrainedWeightsUnavailable:
    target = os.path.realpath(path)
    files = path if target == path else f'{path} (a link to {target}; delete both)'
    return PretrainedWeightsUnavailable(
        f'The pretrained weights of {variant} in the cache, {path}, cannot be read: the file looks damaged or is not '
        f'a checkpoint ({why}). Delete {files} and it is downloaded again on the next load.')


@contextmanager
def pretrained_weights(
        variant: str,
        kwargs: Mapping[str, Any],
        release_sha256: Mapping[str, Optional[str]],
) -> Iterator[Optional[Dict[str, Any]]]:
    """For building `create_model(variant, pretrained=True, **kwargs)`: yields the pretrained cfg overlay that points
    timm at a local file, fetched before the model is built (so a missing source leaves no half-made model), or
    None where timm finds the weights itself. An error raised while building names the weights; a cached file that
    cannot be read at all is reported as such, with the way out."""
    from timm.models import resolve_pretrained_cfg
    overlay = kwargs.get('pretrained_cfg_overlay')
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), overlay)
    cached = None
    if cfg.source in ('hf-hub', 'local-dir') or cfg.file or cfg.state_dict:
        path = cfg.file or cfg.hf_hub_id
    elif cfg.hf_hub_id or cfg.url:
        path = cached = _fetch(cfg, release_sha256, kwargs.get('cache_dir'))
    else:
        raise PretrainedWeightsUnavailable(
            f'{variant} has no pretrained weights (the authors released none for it). Use pretrained=False, '
            f'or give a file: pretrained_cfg_overlay=dict(file=...) or checkpoint_path=...')
    try:
        yield dict(overlay or {}, file=cached) if cached else None
    except CheckpointMismatchError:
        raise
    except Exception as e:
        why = _why_unreadable(cached) if cached else None
        if why:
            raise _damaged(variant, cached, why) from None
        add_note(e, f'(while building {variant} with the pretrained weights of {path})')
        raise
