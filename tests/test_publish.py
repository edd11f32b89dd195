"""`timm-hvt publish`: every released tag's checkpoint converted, verified and uploaded (here: to a fake hub client)
with what it takes to pin it, offline, on files in the authors' layout named as in their release."""
import hashlib
import json

import pytest
import timm
from timm.models import get_pretrained_cfg

import timm_hvt.publish
from _weights_helpers import assert_weights, caches, fake_hub, save_authors_checkpoint
from timm_hvt import cli
from timm_hvt.hvt import RELEASE_SHA256
from timm_hvt.sources import HubRepo, hub_repo

HUB_FILES = ['README.md', 'config.json', 'model.safetensors']
RELEASED = timm.list_pretrained('hvt_*')


def _file_name(tag: str) -> str:
    return get_pretrained_cfg(tag).url.rsplit('/', 1)[-1]


def _pasted_rows(printed: str) -> tuple:
    """The rows publish prints to paste into hvt.py, read as that file reads them: (default_cfgs, RELEASE_SHA256)."""
    text = printed.split('To pin them, these rows in timm_hvt/hvt.py: of default_cfgs,\n', 1)[1]
    cfgs, hashes = text.split('\nand of RELEASE_SHA256,\n', 1)
    hashes = '\n'.join(line for line in hashes.splitlines() if line.startswith('    '))
    return eval('{' + cfgs + '}', {'_cfg': dict}), eval('{' + hashes + '}')


@pytest.fixture(scope='module')
def release_files(tmp_path_factory):
    """The six release files (random weights of the real shapes), with their sha256 and state dicts."""
    folder = tmp_path_factory.mktemp('release')
    files = {}
    for seed, tag in enumerate(RELEASED):
        path = folder / _file_name(tag)
        state_dict = save_authors_checkpoint(path, tag.split('.')[0], seed=seed)
        files[tag] = dict(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), state_dict=state_dict)
    return folder, files


class _FakeHfApi:
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return type('RepoUrl', (), {'repo_id': repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.uploads.append((repo_id, folder_path, kwargs))
        return type('CommitInfo', (), {'oid': hashlib.sha1(repo_id.encode()).hexdigest()})()


def test_dry_run_converts_all_six_and_prints_what_to_pin(release_files, caches, tmp_path, capsys):
    caches.offline()  # with --sources nothing is fetched
    folder, files = release_files
    out = tmp_path / 'out'
    assert cli.main(['publish', '--namespace', 'my-org', '--sources', str(folder), '--out', str(out), '--dry-run']) == 0
    printed = capsys.readouterr().out
    assert '6 of 6 tags converted' in printed
    cfgs, hashes = _pasted_rows(printed)
    for tag, file in files.items():
        hub_folder = out / 'my-org' / tag
        assert sorted(p.name for p in hub_folder.iterdir()) == HUB_FILES
        assert json.loads((hub_folder / 'config.json').read_text())['architecture'] == tag.split('.')[0]
        assert f"timm.create_model('hf-hub:my-org/{tag}', pretrained=True)" in (hub_folder / 'README.md').read_text()
        assert file['sha256'] in printed
        assert hashes[tag] == file['sha256']  # the table rows, ready to paste
        assert cfgs[tag] == dict(hf_hub_id=f'my-org/{tag}', url=get_pretrained_cfg(tag).url)  # a dry run pins nothing
        assert f'my-org/{tag}: dry run, not uploaded' in printed
    model = timm.create_model(f'local-dir:{out / "my-org" / "hvt_s_4.in1k"}', pretrained=True)
    assert_weights(model, files['hvt_s_4.in1k']['state_dict'])


def test_upload_prints_the_commits_and_a_failing_tag_does_not_stop_the_others(
        release_files, caches, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    caches.offline()
    monkeypatch.setattr(huggingface_hub, 'HfApi', _FakeHfApi)
    _FakeHfApi.uploads.clear()
    folder, files = release_files
    sources = tmp_path / 'sources'  # hvt_ti_1's file, a damaged hvt_s_0 file, the other four missing
    sources.mkdir()
    (sources / _file_name('hvt_ti_1.in1k')).symlink_to(files['hvt_ti_1.in1k']['path'])
    (sources / _file_name('hvt_s_0.in1k')).write_bytes(b'not a checkpoint ' * 100)
    out = tmp_path / 'out'
    assert cli.main(['publish', '--namespace', 'my-org', '--sources', str(sources), '--out', str(out)]) == 1
    printed = capsys.readouterr().out
    commit = hashlib.sha1(b'my-org/hvt_ti_1.in1k').hexdigest()
    assert f'my-org/hvt_ti_1.in1k@{commit}' in printed.splitlines()
    cfgs, hashes = _pasted_rows(printed)
    assert hashes == {'hvt_ti_1.in1k': files['hvt_ti_1.in1k']['sha256']}
    assert cfgs['hvt_ti_1.in1k']['hf_hub_id'] == f'my-org/hvt_ti_1.in1k@{commit}'
    # pasted, the row turns the hub route on: the default route takes the pinned repo
    cfg = get_pretrained_cfg('hvt_ti_1.in1k')
    cfg.hf_hub_id = cfgs['hvt_ti_1.in1k']['hf_hub_id']
    monkeypatch.delenv('TIMM_HVT_HUB_NAMESPACE', raising=False)
    assert hub_repo(cfg) == HubRepo('my-org/hvt_ti_1.in1k', commit)
    assert [(repo, folder) for repo, folder, _ in _FakeHfApi.uploads] == [
        ('my-org/hvt_ti_1.in1k', str(out / 'my-org' / 'hvt_ti_1.in1k'))]
    failed = {line.split(':')[0]: line for line in printed.splitlines() if ': FAILED: ' in line}
    assert sorted(failed) == sorted(tag for tag in RELEASED if tag != 'hvt_ti_1.in1k')
    assert str(sources / _file_name('hvt_s_0.in1k')) in failed['hvt_s_0.in1k']
    for tag in ('hvt_s_1.in1k', 'hvt_s_4.in1k'):
        assert 'not found' in failed[tag] and str(sources / _file_name(tag)) in failed[tag]
    assert '1 of 6 tags converted and uploaded' in printed
    assert sorted(p.name for p in (out / 'my-org').iterdir()) == ['hvt_ti_1.in1k']


@pytest.mark.parametrize('known_sha256', ['right', 'wrong'])
def test_without_sources_it_takes_the_release_route(caches, tmp_path, monkeypatch, capsys, known_sha256):
    source = tmp_path / 'hvt_ti_1.pth'
    save_authors_checkpoint(source, 'hvt_ti_1', seed=3)
    data = source.read_bytes()
    digest = hashlib.sha256(data if known_sha256 == 'right' else b'another file').hexdigest()
    with fake_hub() as hub:
        caches.endpoint(hub.url)
        hub.files['/releases/v1.0/hvt_ti_1.pth'] = data
        served = get_pretrained_cfg('hvt_ti_1.in1k')
        served.url = hub.url + '/releases/v1.0/hvt_ti_1.pth'
        monkeypatch.setattr(timm_hvt.publish, 'get_pretrained_cfg', lambda tag: served)  # the release, served here
        monkeypatch.setitem(RELEASE_SHA256, 'hvt_ti_1.in1k', digest)
        status = cli.main(['publish', '--namespace', 'o', '--tag', 'hvt_ti_1.in1k', '--out', str(tmp_path / 'out'),
                           '--dry-run'])
    printed = capsys.readouterr().out
    cached = caches.torch_checkpoints / 'hvt_ti_1.pth'
    if known_sha256 == 'right':
        assert status == 0 and cached.read_bytes() == data and f'source {cached}, sha256 {digest}' in printed
    else:  # the download is refused, nothing is cached, nothing converted
        assert status == 1 and not cached.exists() and not (tmp_path / 'out').exists()
        assert 'hvt_ti_1.in1k: FAILED: ' in printed and digest[:16] in printed


@pytest.mark.parametrize('name', ['hvt_ti_2.in1k', 'hvt_ti_2', 'vit_nope'])
def test_a_tag_without_released_weights_is_named(caches, capsys, name):
    assert cli.main(['publish', '--namespace', 'o', '--tag', name, '--dry-run']) == 1
    err = capsys.readouterr().err
    assert name in err and 'hvt_ti_1' in err and err.count('\n') == 1


def test_tags_by_model_name_and_alias(release_files, caches, tmp_path, capsys):
    caches.offline()
    folder, _ = release_files
    assert cli.main(['publish', '--namespace', 'o', '--sources', str(folder), '--out', str(tmp_path),
                     '--tag', 'scale_hvt_ti_4', '--tag', 'hvt_ti_1', '--dry-run']) == 0
    assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == ['hvt_s_4.in1k', 'hvt_ti_1.in1k']
