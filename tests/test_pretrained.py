"""Pretrained cfgs, and where `pretrained=True` and timm's other routes take the weights from, offline.

Source selection is shown with 2-block hvt_ti_1 weights (TINY); the resolution / patch scaling with full models."""
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from _weights_helpers import (
    REVISION, TINY, Caches, assert_weights, caches, fake_hub, hub_id, offline_env, pinned, release_url,
    save_authors_checkpoint, save_hub_weights, save_malicious_checkpoint,
)
from timm_hvt import CheckpointMismatchError, PretrainedWeightsUnavailable, checkpoint_filter_fn
from timm_hvt.hvt import RELEASE_SHA256, resample_pos_embed_1d
from timm_hvt.paper import ARXIV_ID
from timm_hvt.sources import HubRepo, hub_repo

RELEASED = ['hvt_s_0', 'hvt_s_1', 'hvt_s_2', 'hvt_s_3', 'hvt_s_4', 'hvt_ti_1']
WEIGHTS_LOGGER = 'timm_hvt.sources'
PINNED = pinned('hvt_ti_1')


@pytest.fixture
def sources(caches: Caches, tmp_path: Path):
    """Tiny hvt_ti_1 weights: A as the hub's model.safetensors, B as the authors' release file."""
    hub_sd = save_authors_checkpoint(tmp_path / 'a.pth', 'hvt_ti_1', seed=1, **TINY)
    release_sd = save_authors_checkpoint(tmp_path / 'b.pth', 'hvt_ti_1', seed=2, **TINY)
    return dict(caches=caches, hub_sd=hub_sd, release_sd=release_sd, release_file=tmp_path / 'b.pth',
                hub_file=save_hub_weights(tmp_path / 'model.safetensors', hub_sd))


@pytest.fixture
def release_cached(sources) -> Path:
    """Offline, with the tiny release file of hvt_ti_1 in the torch hub cache; returns its path there."""
    sources['caches'].offline()
    return sources['caches'].put_release(release_url('hvt_ti_1'), sources['release_file'])


def _tiny_hub_config() -> dict:
    """timm's config.json of a 2-block hvt_ti_1 (what save_for_hf writes)."""
    cfg = timm.models.get_pretrained_cfg('hvt_ti_1.in1k').to_dict(remove_source=True)
    return dict(architecture=cfg.pop('architecture'), num_classes=1000, model_args=TINY, pretrained_cfg=cfg)


def _source_lines(caplog) -> list:
    """What timm-hvt logged about where weights came from: warnings, so that they show at the default log level."""
    assert not [r for r in caplog.records if r.name == WEIGHTS_LOGGER and r.levelno < logging.WARNING]
    return [r.getMessage() for r in caplog.records if r.name == WEIGHTS_LOGGER]


def test_pretrained_tags_and_cfgs():
    assert timm.list_pretrained('hvt*') == [f'{arch}.in1k' for arch in RELEASED] == sorted(RELEASE_SHA256)
    for arch in RELEASED:
        cfg = timm.models.get_pretrained_cfg(f'{arch}.in1k')
        assert cfg.hf_hub_id.partition('@')[0] == f'timm-hvt/{arch}.in1k'
        assert cfg.url.startswith('https://github.com/zhuang-group/HVT/releases/download/v1.')
        assert cfg.license == 'apache-2.0'
        assert ARXIV_ID in cfg.paper_ids
    assert timm.models.get_pretrained_cfg('hvt_ti_1').tag == 'in1k'  # the untagged name resolves to .in1k
    assert timm.models.get_pretrained_cfg('hvt_s_4').url.endswith('/scale_hvt_ti_4.pth')
    assert not timm.models.get_pretrained_cfg('hvt_ti_0').hf_hub_id
    assert not timm.models.get_pretrained_cfg('hvt_ti_0').url


def test_only_a_pinned_or_chosen_hub_repo_is_a_source(monkeypatch):
    cfg = timm.models.get_pretrained_cfg('hvt_ti_1.in1k')
    monkeypatch.delenv('TIMM_HVT_HUB_NAMESPACE', raising=False)
    assert hub_repo(cfg) is None  # unpinned: nobody here controls what the repo holds
    cfg.hf_hub_id = PINNED['hf_hub_id']
    assert hub_repo(cfg) == HubRepo(hub_id('hvt_ti_1'), REVISION)
    monkeypatch.setenv('TIMM_HVT_HUB_NAMESPACE', 'my-org')  # the user's own: unpinned, and said so
    assert hub_repo(cfg) == HubRepo('my-org/hvt_ti_1.in1k', None) and 'unpinned' in str(hub_repo(cfg))


def test_pinned_hub_cache_comes_first_without_the_network(sources, caplog):
    c = sources['caches']
    snapshot = c.put_hub_repo(hub_id('hvt_ti_1'), {'model.safetensors': sources['hub_file']}, commit=REVISION)
    c.put_release(release_url('hvt_ti_1'), sources['release_file'])
    with fake_hub() as hub:  # reachable, not offline: still not asked
        c.endpoint(hub.url)
        model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
    assert hub.requests == []
    assert_weights(model, sources['hub_sd'])
    lines = _source_lines(caplog)
    assert len(lines) == 1 and PINNED['hf_hub_id'] in lines[0] and str(snapshot / 'model.safetensors') in lines[0]
    assert model.pretrained_cfg['file'] == str(snapshot / 'model.safetensors')


def test_an_unpinned_hub_repo_is_never_used(sources, caplog):
    # the repo in the HF cache and on the hub: pretrained=True takes neither, and asks the hub nothing
    c = sources['caches']
    c.put_hub_repo(hub_id('hvt_ti_1'), {'model.safetensors': sources['hub_file']})
    with fake_hub() as hub:
        c.endpoint(hub.url)
        hub.files[f'/{hub_id("hvt_ti_1")}/resolve/main/model.safetensors'] = sources['hub_file'].read_bytes()
        hub.files['/releases/hvt_ti_1.pth'] = sources['release_file'].read_bytes()
        model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(
            url=hub.url + '/releases/hvt_ti_1.pth'), **TINY)
    assert hub.requests and all(r.endswith('/releases/hvt_ti_1.pth') for r in hub.requests)
    assert_weights(model, sources['release_sd'])
    assert hub_id('hvt_ti_1') not in _source_lines(caplog)[0]


def test_release_cache_comes_before_the_network(sources, caplog):
    c = sources['caches']
    cached = c.put_release(release_url('hvt_ti_1'), sources['release_file'])
    with fake_hub() as hub:
        c.endpoint(hub.url)
        model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
    assert hub.requests == []
    assert_weights(model, sources['release_sd'])
    lines = _source_lines(caplog)
    assert len(lines) == 1 and release_url('hvt_ti_1') in lines[0] and str(cached) in lines[0]
    assert PINNED['hf_hub_id'] in lines[0]  # says that the pinned hub repo is not in the HF cache


@pytest.mark.smoke  # also run at the dependency floors
@pytest.mark.parametrize('offline', [True, False], ids=['offline', 'unreachable'])
def test_release_cache_offline(sources, caplog, offline):
    c = sources['caches']
    c.offline(offline)
    c.put_release(release_url('hvt_ti_1'), sources['release_file'])
    model = timm.create_model('hvt_ti_1', pretrained=True, **TINY)
    assert_weights(model, sources['release_sd'])
    assert len(_source_lines(caplog)) == 1


@pytest.mark.smoke  # also run at the dependency floors
@pytest.mark.parametrize('error_code', ['RepoNotFound', 'EntryNotFound'])
def test_downloads_from_the_pinned_hub_first_then_the_release(sources, caplog, error_code):
    c = sources['caches']
    with fake_hub(error_code) as hub:
        c.endpoint(hub.url)
        hub.files['/releases/hvt_ti_1.pth'] = sources['release_file'].read_bytes()
        overlay = dict(PINNED, url=hub.url + '/releases/hvt_ti_1.pth')
        model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=overlay, **TINY)
        assert (c.torch_checkpoints / 'hvt_ti_1.pth').read_bytes() == sources['release_file'].read_bytes()
        first_release = next(i for i, r in enumerate(hub.requests) if r.startswith('GET /releases/'))
        # the hub was asked first, for the pinned commit's file
        assert any(f'{hub_id("hvt_ti_1")}/resolve/{REVISION}/' in r for r in hub.requests[:first_release])
        timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=overlay, **TINY)
        assert sum(r.startswith('GET /releases/') for r in hub.requests) == 1  # the second came from the cache
    assert_weights(model, sources['release_sd'])
    line = _source_lines(caplog)[0]
    assert hub_id('hvt_ti_1') in line and overlay['url'] in line and 'NotFound' in line


def test_downloads_from_the_pinned_hub_into_the_hf_cache(sources, caplog):
    c = sources['caches']
    with fake_hub() as hub:
        c.endpoint(hub.url)
        hub.files[f'/{hub_id("hvt_ti_1")}/resolve/{REVISION}/model.safetensors'] = sources['hub_file'].read_bytes()
        model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
        assert not any('/releases/' in r for r in hub.requests)
    assert_weights(model, sources['hub_sd'])
    line, = _source_lines(caplog)
    assert PINNED['hf_hub_id'] in line and 'downloaded' in line and str(c.hf) in line
    c.offline()  # in the HF cache now
    model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
    assert_weights(model, sources['hub_sd'])


def test_the_users_own_namespace_is_asked_unpinned(sources, caplog, monkeypatch):
    c = sources['caches']
    monkeypatch.setenv('TIMM_HVT_HUB_NAMESPACE', 'my-org')
    with fake_hub() as hub:
        c.endpoint(hub.url)
        hub.files['/my-org/hvt_ti_1.in1k/resolve/main/model.safetensors'] = sources['hub_file'].read_bytes()
        model = timm.create_model('hvt_ti_1', pretrained=True, **TINY)
    assert_weights(model, sources['hub_sd'])
    line, = _source_lines(caplog)
    assert 'my-org/hvt_ti_1.in1k (unpinned)' in line


@pytest.mark.parametrize('matches', [True, False], ids=['same', 'other'])
def test_release_download_checks_a_known_sha256(sources, monkeypatch, matches):
    c = sources['caches']
    data = sources['release_file'].read_bytes()
    digest = hashlib.sha256(data if matches else data + b'other file').hexdigest()
    monkeypatch.setitem(RELEASE_SHA256, 'hvt_ti_1.in1k', digest)
    with fake_hub() as hub:
        c.endpoint(hub.url)
        hub.files['/releases/v1.0/hvt_ti_1.pth'] = data
        overlay = dict(url=hub.url + '/releases/v1.0/hvt_ti_1.pth')
        if matches:
            model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=overlay, **TINY)
            assert_weights(model, sources['release_sd'])
        else:
            with pytest.raises(PretrainedWeightsUnavailable) as info:
                timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=overlay, **TINY)
            assert digest in str(info.value) and hashlib.sha256(data).hexdigest() in str(info.value)
    assert (c.torch_checkpoints / 'hvt_ti_1.pth').exists() == matches
    assert [p.name for p in c.torch_checkpoints.iterdir()] == (['hvt_ti_1.pth'] if matches else [])


@pytest.mark.parametrize('matches', [True, False], ids=['same', 'other'])
def test_release_cache_checks_a_known_sha256(sources, release_cached, monkeypatch, matches):
    data = release_cached.read_bytes()
    digest = hashlib.sha256(data if matches else data + b'other file').hexdigest()
    monkeypatch.setitem(RELEASE_SHA256, 'hvt_ti_1.in1k', digest)
    if matches:
        assert_weights(timm.create_model('hvt_ti_1', pretrained=True, **TINY), sources['release_sd'])
        return
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        timm.create_model('hvt_ti_1', pretrained=True, **TINY)
    message = str(info.value)
    assert digest in message and hashlib.sha256(data).hexdigest() in message
    assert str(release_cached) in message and 'Delete' in message


def test_error_names_every_source_when_nothing_can_be_had(caches):
    caches.offline()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
    message = str(info.value)
    for part in (PINNED['hf_hub_id'], release_url('hvt_ti_1'), str(caches.hf), str(caches.torch_checkpoints)):
        assert part in message


def test_error_when_a_release_download_fails(caches):
    with fake_hub('RepoNotFound') as hub:
        caches.endpoint(hub.url)
        url = hub.url + '/releases/missing.pth'
        with pytest.raises(PretrainedWeightsUnavailable, match='missing.pth'):
            timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(url=url), **TINY)
    assert not (caches.torch_checkpoints / 'missing.pth').exists()


@pytest.mark.parametrize('arch', ['hvt_ti_0', 'hvt_ti_2', 'hvt_ti_4'])
def test_variants_without_weights_refuse_pretrained(caches, arch):
    with pytest.raises(PretrainedWeightsUnavailable, match=f'{arch} has no pretrained weights'):
        timm.create_model(arch, pretrained=True)


def test_hf_hub_model_names(sources, caplog):
    c = sources['caches']
    config = _tiny_hub_config()
    c.put_hub_repo(
        hub_id('hvt_ti_1'), {'model.safetensors': sources['hub_file'], 'config.json': json.dumps(config).encode()})
    c.offline()
    model = timm.create_model(f'hf-hub:{hub_id("hvt_ti_1")}', pretrained=True)
    assert_weights(model, sources['hub_sd'])
    assert model.pretrained_cfg['source'] == 'hf-hub'
    assert not _source_lines(caplog)  # timm's own route


def test_hf_hub_names_behave_as_for_any_timm_model(sources, release_cached):
    # no fallback for hf-hub: names: with the repo missing, HVT fails as a timm model does, the release unused
    errors = []
    for name in (f'hf-hub:{hub_id("hvt_ti_1")}', 'hf-hub:timm/deit_tiny_patch16_224.fb_in1k'):
        with pytest.raises(Exception) as info:
            timm.create_model(name, pretrained=True)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and isinstance(errors[0], LocalEntryNotFoundError)


def test_hub_repo_with_pytorch_model_bin_only(sources, caplog):
    # a third-party repo of fine-tuned HVT weights, saved with torch.save instead of safetensors
    c = sources['caches']
    config = _tiny_hub_config()
    c.put_hub_repo('someone/hvt-bin', {
        'pytorch_model.bin': sources['release_file'], 'config.json': json.dumps(config).encode()})
    c.offline()
    model = timm.create_model('hf-hub:someone/hvt-bin', pretrained=True)
    assert_weights(model, sources['release_sd'])
    assert model.pretrained_cfg['hf_hub_id'] == 'someone/hvt-bin'
    assert not _source_lines(caplog)  # timm's own route


def test_file_overlay_checkpoint_path_and_load_checkpoint(sources, tmp_path):
    sources['caches'].offline()
    release = str(sources['release_file'])
    model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(file=release), **TINY)
    assert_weights(model, sources['release_sd'])
    # train.py --pretrained --pretrained-path X --num-classes 10
    model = timm.create_model(
        'hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(file=release), num_classes=10, **TINY)
    assert model.head.weight.shape == (10, 192)
    assert_weights(model, sources['release_sd'], keys=['pos_embed', 'norm.weight'])
    # train.py --initial-checkpoint, and timm's load_checkpoint with the filter (here: to another resolution)
    assert_weights(timm.create_model('hvt_ti_1', checkpoint_path=release, **TINY), sources['release_sd'])
    model = timm.create_model('hvt_ti_1', img_size=288, **TINY)
    timm.models.load_checkpoint(model, release, filter_fn=checkpoint_filter_fn)
    assert_weights(model, sources['release_sd'], keys=['patch_embed.proj.weight', 'blocks.1.attn.qkv.weight'])
    assert model.pos_embed.shape == (1, 18 * 18, 192)
    # a hub folder of this project's layout, by timm's local-dir: name
    folder = tmp_path / 'folder'
    folder.mkdir()
    save_hub_weights(folder / 'model.safetensors', sources['hub_sd'])
    (folder / 'config.json').write_text(json.dumps(_tiny_hub_config()))
    assert_weights(timm.create_model(f'local-dir:{folder}', pretrained=True), sources['hub_sd'])


def test_in_chans_and_num_classes_adapt(sources, release_cached):
    model = timm.create_model('hvt_ti_1', pretrained=True, in_chans=1, num_classes=10, **TINY)
    release = sources['release_sd']
    assert model.head.weight.shape == (10, 192) and model.num_classes == 10
    # timm folds the three RGB filters of the first conv into one
    torch.testing.assert_close(model.patch_embed.proj.weight, release['patch_embed.proj.weight'].sum(1, keepdim=True))
    assert_weights(model, release, keys=['pos_embed', 'blocks.0.pos_embed', 'blocks.1.mlp.fc2.weight'])
    assert model(torch.randn(1, 1, 224, 224)).shape == (1, 10)


def test_features_only_with_pretrained(sources, release_cached):
    model = timm.create_model('hvt_ti_1', pretrained=True, features_only=True, out_indices=(0, 1), **TINY)
    assert torch.equal(model.model.pos_embed, sources['release_sd']['pos_embed'])


def test_scale_resolution_resamples_position_embeddings(caches, tmp_path):
    # the paper's Scale HVT use: the released hvt_s_4 at a higher resolution
    caches.offline()
    path = tmp_path / 'scale_hvt_ti_4.pth'
    release = save_authors_checkpoint(path, 'hvt_s_4')
    caches.put_release(release_url('hvt_s_4'), path)
    model = timm.create_model('hvt_s_4', pretrained=True, img_size=384)
    torch.testing.assert_close(
        model.pos_embed, resample_abs_pos_embed(release['pos_embed'], [24, 24], num_prefix_tokens=0))
    for i, length in zip((0, 3, 6, 9), (287, 143, 71, 35)):
        assert model.blocks[i].pos_embed.shape == (1, length, 384)
        torch.testing.assert_close(
            model.blocks[i].pos_embed, resample_pos_embed_1d(release[f'blocks.{i}.pos_embed'], length))
    assert_weights(model, release, keys=['patch_embed.proj.weight', 'blocks.5.attn.qkv.weight', 'head.weight'])
    assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)


def test_patch_size_change_resamples_patch_kernel(sources, release_cached):
    model = timm.create_model('hvt_ti_1', pretrained=True, patch_size=8, img_size=112, **TINY)
    release = sources['release_sd']
    torch.testing.assert_close(
        model.patch_embed.proj.weight, resample_patch_embed(release['patch_embed.proj.weight'], [8, 8]))
    assert torch.equal(model.pos_embed, release['pos_embed'])  # the same 14x14 grid


def _assert_names_the_damaged_file(error: Exception, *paths) -> None:
    message = str(error)
    assert all(str(p) in message for p in paths), message
    assert 'damaged' in message and 'Delete' in message
    assert 'weights_only=False' not in message and not getattr(error, '__notes__', None)
    assert error.__suppress_context__  # the loader's own advice does not show underneath


def test_damaged_hub_cache_is_named_not_a_fallback(sources, release_cached):
    damaged = {'model.safetensors': sources['hub_file'].read_bytes()[:1000]}
    snapshot = sources['caches'].put_hub_repo(hub_id('hvt_ti_1'), damaged, commit=REVISION)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
    link = snapshot / 'model.safetensors'
    _assert_names_the_damaged_file(info.value, link, link.resolve())  # the blob too: the hub client reuses it


@pytest.mark.parametrize('content', ['random', 'code', 'truncated'])
def test_damaged_release_cache_is_named_with_the_way_out(sources, tmp_path, content):
    c = sources['caches']
    c.offline()
    if content == 'code':
        save_malicious_checkpoint(tmp_path / 'evil.pth', tmp_path / 'code-ran', **TINY)
        data = (tmp_path / 'evil.pth').read_bytes()
    else:
        good = sources['release_file'].read_bytes()
        data = good[:len(good) // 2] if content == 'truncated' else random.Random(0).randbytes(100_000)
    cached = c.put_release(release_url('hvt_ti_1'), data)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        timm.create_model('hvt_ti_1', pretrained=True, **TINY)
    _assert_names_the_damaged_file(info.value, cached)
    assert not (tmp_path / 'code-ran').exists()

    cached.unlink()  # the way out the error gives: the next load fetches the file again (here: from a good copy)
    c.put_release(release_url('hvt_ti_1'), sources['release_file'])
    assert_weights(timm.create_model('hvt_ti_1', pretrained=True, **TINY), sources['release_sd'])


def test_other_errors_with_cached_weights_keep_their_type(sources, release_cached):
    with pytest.raises(CheckpointMismatchError):  # a readable file of another variant is no damage
        timm.create_model('hvt_ti_1', pretrained=True, depth=3)


def test_namespace_and_offline_from_the_environment(tmp_path):
    # a fresh interpreter, with TIMM_HVT_HUB_NAMESPACE and HF_HUB_OFFLINE set the way users set them
    env = dict(os.environ, **offline_env(tmp_path), TIMM_HVT_HUB_NAMESPACE='my-org')
    script = (
        'import timm\n'
        'try:\n'
        '    timm.create_model("hvt_ti_1", pretrained=True, depth=2)\n'
        'except RuntimeError as e:\n'
        '    print(e)\n')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, env=env)
    assert 'my-org/hvt_ti_1.in1k (unpinned)' in out.stdout and 'HF_HUB_OFFLINE' in out.stdout, out.stderr


@pytest.mark.parametrize('cache', ['hub', 'release'])
def test_source_line_at_the_default_log_level_and_no_network_when_cached(sources, tmp_path, cache):
    # a fresh interpreter that configures no logging and is not told to be offline, the hub endpoint a server
    # that records every request: weights already on disk are loaded without asking it anything
    c = sources['caches']
    if cache == 'hub':
        c.put_hub_repo(hub_id('hvt_ti_1'), {'model.safetensors': sources['hub_file']}, commit=REVISION)
    else:
        c.put_release(release_url('hvt_ti_1'), sources['release_file'])
    with fake_hub() as hub:
        env = dict(os.environ, **offline_env(c.root))
        env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE='0')
        load = f'import timm; timm.create_model("hvt_ti_1", pretrained=True, depth=2, pretrained_cfg_overlay={PINNED})'
        out = subprocess.run([sys.executable, '-c', load], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert hub.requests == []
    lines = [line for line in out.stderr.splitlines() if 'pretrained weights from' in line]
    expected = str(c.hf) if cache == 'hub' else release_url('hvt_ti_1')
    assert len(lines) == 1 and expected in lines[0], out.stderr[-3000:]


def test_a_pinned_hub_revision_is_what_loads(sources):
    # the pinned commit's file is loaded even when the repo's main branch has moved on
    c = sources['caches']
    c.put_hub_repo(hub_id('hvt_ti_1'), {'model.safetensors': sources['hub_file']}, commit=REVISION)
    other = save_hub_weights(c.root / 'other.safetensors', sources['release_sd'])
    c.put_hub_repo(hub_id('hvt_ti_1'), {'model.safetensors': other}, commit='b' * 40)  # refs/main names this one
    c.offline()
    model = timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=PINNED, **TINY)
    assert_weights(model, sources['hub_sd'])
