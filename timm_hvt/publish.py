"""`timm-hvt publish`: every released tag's checkpoint of the authors, converted into a verified hub folder and
uploaded to '<namespace>/<tag>', with what is needed to pin it: the source file's sha256 and the commit made.

Each tag's source is a file under `--sources` named as in the authors' release, or else the release file that
`pretrained=True` would use (torch's hub cache, downloaded once, its sha256 checked where known). One tag's failure
does not stop the others.
"""
import os
from typing import Callable, Iterable, List, NamedTuple, Optional, Tuple

from timm.models import get_pretrained_cfg, list_pretrained

from .convert import convert_checkpoint, hvt_model_name
from .errors import describe_error
from .hvt import RELEASE_SHA256
from .push import push_folder
from .sources import fetch_release, sha256_of

__all__ = ['PublishedTag', 'publish', 'pinned_rows']


class PublishedTag(NamedTuple):
    tag: str
    source: Optional[str] = None
    sha256: Optional[str] = None
    folder: Optional[str] = None
    commit: Optional[str] = None  # None for a dry run
    error: Optional[str] = None


def _source_file(tag: str, sources: Optional[str], cache_dir: Optional[str]) -> str:
    url = get_pretrained_cfg(tag).url
    if sources is None:
        return fetch_release(url, RELEASE_SHA256.get(tag), cache_dir)[0]
    path = os.path.join(sources, url.rsplit('/', 1)[-1])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --sources must hold the authors' release file of {tag}")
    return path


def _publish_tag(tag: str, namespace: str, sources: Optional[str], out: str, dry_run: bool,
                 cache_dir: Optional[str], say: Callable[[str], None]) -> PublishedTag:
    source = _source_file(tag, sources, cache_dir)
    digest = sha256_of(source)
    say(f'{tag}: source {source}, sha256 {digest}')
    known = RELEASE_SHA256.get(tag)
    if known and digest != known:
        raise ValueError(f'{source} has sha256 {digest}, but the release file of {tag} has {known}')
    repo_id = f'{namespace}/{tag}'
    result = convert_checkpoint(source, tag, os.path.join(out, namespace, tag), repo_id=repo_id, overwrite=True)
    say(f'{tag}: wrote {result.out_dir} ({result.params_m:.2f}M params, {result.gmacs:.2f} GMACs; reloaded through '
        f'timm, max abs logits diff {result.max_abs_diff:.3g})')
    commit = None
    if not dry_run:
        _, commit = push_folder(result.out_dir, repo_id, commit_message=f'Upload {tag} converted by timm-hvt')
    return PublishedTag(tag, source, digest, result.out_dir, commit)


def publish(
        namespace: str,
        sources: Optional[str] = None,
        out: str = 'hub',
        dry_run: bool = False,
        tags: Optional[Iterable[str]] = None,
        cache_dir: Optional[str] = None,
        say: Callable[[str], None] = print,
) -> List[PublishedTag]:
    """Convert (and, unless `dry_run`, upload) each released tag (or each of `tags`); one result per tag."""
    tags = list_pretrained('hvt_*') if tags is None else [hvt_model_name(name, released=True) for name in tags]
    results = []
    for tag in tags:
        try:
            results.append(_publish_tag(tag, namespace, sources, out, dry_run, cache_dir, say))
        except Exception as e:
            say(f'{tag}: FAILED: {describe_error(e)}')
            results.append(PublishedTag(tag, error=describe_error(e)))
    return results


def pinned_rows(namespace: str, results: Iterable[PublishedTag]) -> Tuple[List[str], List[str]]:
    """For each published tag: its `default_cfgs` entry pinned to the commit made, and its `RELEASE_SHA256` entry,
    as lines to paste into timm_hvt/hvt.py."""
    cfgs, hashes = [], []
    for r in results:
        if r.error:
            continue
        repo = f'{namespace}/{r.tag}' + (f'@{r.commit}' if r.commit else '')
        url = get_pretrained_cfg(r.tag).url
        cfgs.append(f"    '{r.tag}': _cfg(\n        hf_hub_id='{repo}',\n        url='{url}'),")
        hashes.append(f"    '{r.tag}': '{r.sha256}',")
    return cfgs, hashes
