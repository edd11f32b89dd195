"""No load path unpickles code; truncated and corrupt files fail with an error naming the file."""
from pathlib import Path
from typing import Callable, Dict

import pytest
import timm
import torch

from _weights_helpers import (
    TINY, Caches, caches, hub_id, offline_env, release_url, run_cli, save_authors_checkpoint, save_hub_weights,
    save_malicious_checkpoint, unpickle_without_safeguards,
)
from timm_hvt.checkpoint import CheckpointReadError, UnsafeCheckpointError, read_checkpoint
from timm_hvt.convert import convert_checkpoint


def _routes(c: Caches, out_dir: Path) -> Dict[str, Callable[[Path], object]]:
    """Every way a checkpoint file gets into a model, each reading `path` (release routes: from the torch hub
    cache, see `_read_as`)."""
    def pretrained_release(path: Path):
        c.put_release(release_url('hvt_ti_1'), path)
        return timm.create_model('hvt_ti_1', pretrained=True, **TINY)

    def hf_hub_name_release(path: Path):
        c.put_release(release_url('hvt_ti_1'), path)
        return timm.create_model(f'hf-hub:{hub_id("hvt_ti_1")}', pretrained=True, **TINY)

    def load_checkpoint(path: Path):
        return timm.models.load_checkpoint(timm.create_model('hvt_ti_1', **TINY), str(path))

    return {
        'read_checkpoint': read_checkpoint,
        'pretrained=True (release fallback)': pretrained_release,
        'hf-hub: name (release fallback)': hf_hub_name_release,
        'pretrained_cfg_overlay file (--pretrained-path)': lambda path: timm.create_model(
            'hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY),
        'checkpoint_path (--initial-checkpoint)': lambda path: timm.create_model(
            'hvt_ti_1', checkpoint_path=str(path), **TINY),
        'timm.models.load_checkpoint': load_checkpoint,
        'convert': lambda path: convert_checkpoint(str(path), 'hvt_ti_1', str(out_dir)),
    }


def _read_as(c: Caches, route: str, path: Path) -> Path:
    return c.torch_checkpoints / 'hvt_ti_1.pth' if 'release fallback' in route else path


@pytest.fixture
def malicious(tmp_path: Path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'hvt_ti_1.pth'
    save_malicious_checkpoint(path, marker, **TINY)
    return path, marker


def test_the_malicious_fixture_really_runs_code(malicious):
    path, marker = malicious
    unpickle_without_safeguards(path)
    assert marker.exists()


def test_every_load_path_refuses_code(caches, malicious, tmp_path):
    path, marker = malicious
    caches.offline()
    for route, load in _routes(caches, tmp_path / 'out').items():
        with pytest.raises(UnsafeCheckpointError) as info:
            load(path)
        assert str(_read_as(caches, route, path)) in str(info.value) and 'system' in str(info.value), route
        assert not marker.exists(), route
    assert not (tmp_path / 'out').exists()


def test_cli_convert_refuses_code(malicious, tmp_path):
    path, marker = malicious
    result = run_cli('convert', str(path), '--model', 'hvt_ti_1', '--out', str(tmp_path / 'out'),
                     env=offline_env(tmp_path))
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr
    assert 'Refused to load' in result.stderr and str(path) in result.stderr
    assert not marker.exists() and not (tmp_path / 'out').exists()


def _damaged_files(tmp_path: Path) -> Dict[str, Path]:
    good = tmp_path / 'good.pth'
    save_authors_checkpoint(good, 'hvt_ti_1', **TINY)
    data = good.read_bytes()
    files = {
        'truncated .pth': (tmp_path / 'truncated.pth', data[:len(data) // 2]),
        'garbage .pth': (tmp_path / 'garbage.pth', b'not a checkpoint at all ' * 40),
        'empty .pth': (tmp_path / 'empty.pth', b''),
    }
    safetensors_file = save_hub_weights(tmp_path / 'good.safetensors', {'pos_embed': torch.zeros(3)})
    files['truncated .safetensors'] = (tmp_path / 'truncated.safetensors', safetensors_file.read_bytes()[:20])
    for path, content in files.values():
        path.write_bytes(content)
    return {kind: path for kind, (path, _) in files.items()}


def test_damaged_files_fail_naming_the_file(caches, tmp_path):
    caches.offline()
    routes = _routes(caches, tmp_path / 'out')
    for kind, path in _damaged_files(tmp_path).items():
        for route, load in routes.items():
            if route.endswith('(release fallback)') and path.suffix != '.pth':
                continue  # release files are .pth
            with pytest.raises(CheckpointReadError, match='truncated or not a') as info:
                load(path)
            assert str(_read_as(caches, route, path)) in str(info.value), (kind, route)


def test_missing_file_is_named(caches, tmp_path):
    missing = tmp_path / 'nowhere.pth'
    for route, load in _routes(caches, tmp_path / 'out').items():
        if 'release fallback' in route:
            continue
        with pytest.raises((FileNotFoundError, CheckpointReadError), match='nowhere.pth'):
            load(missing)
