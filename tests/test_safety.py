"""No load path unpickles code; truncated and corrupt files fail with an error naming the file. On timm's own
routes (load_checkpoint, checkpoint_path=) that error is timm's / torch's, the file name put in front, for every
timm model, and a caller's weights_only=False is left alone."""
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import timm
import torch

from _weights_helpers import (
    TINY, Caches, caches, hub_id, release_url, save_authors_checkpoint, save_hub_weights, save_malicious_checkpoint,
    unpickle_without_safeguards,
)
from timm_hvt import cli
from timm_hvt.checkpoint import CheckpointReadError, UnsafeCheckpointError, read_checkpoint
from timm_hvt.convert import convert_checkpoint

# routes where timm itself reads the file (timm_hvt only names the file in timm's error)
TIMM_ROUTES = ('checkpoint_path (--initial-checkpoint)', 'timm.models.load_checkpoint')
# routes that read the file from a cache the route puts it in: from the torch hub cache or the HF cache
CACHE_ROUTES = ('pretrained=True (release fallback)', 'hf-hub: name (release fallback)',
                'pretrained=True (hub pytorch_model.bin)')


def _routes(c: Caches, out_dir: Path) -> Dict[str, Callable[[Path], object]]:
    """Every way a checkpoint file gets into a model, each reading `path` (cache routes: the copy `_read_as`
    names)."""
    def pretrained_release(path: Path):
        c.put_release(release_url('hvt_ti_1'), path)
        return timm.create_model('hvt_ti_1', pretrained=True, **TINY)

    def hf_hub_name_release(path: Path):
        c.put_release(release_url('hvt_ti_1'), path)
        return timm.create_model(f'hf-hub:{hub_id("hvt_ti_1")}', pretrained=True, **TINY)

    def pretrained_hub_bin(path: Path):
        snapshot = c.put_hub_repo(hub_id('hvt_ti_1'), {'pytorch_model.bin': path})
        try:
            return timm.create_model('hvt_ti_1', pretrained=True, **TINY)
        finally:  # the other routes must not find it
            shutil.rmtree(snapshot.parents[1])

    def load_checkpoint(path: Path):
        return timm.models.load_checkpoint(timm.create_model('hvt_ti_1', **TINY), str(path))

    return {
        'read_checkpoint': read_checkpoint,
        'pretrained=True (release fallback)': pretrained_release,
        'hf-hub: name (release fallback)': hf_hub_name_release,
        'pretrained=True (hub pytorch_model.bin)': pretrained_hub_bin,
        'pretrained_cfg_overlay file (--pretrained-path)': lambda path: timm.create_model(
            'hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY),
        'checkpoint_path (--initial-checkpoint)': lambda path: timm.create_model(
            'hvt_ti_1', checkpoint_path=str(path), **TINY),
        'timm.models.load_checkpoint': load_checkpoint,
        'convert': lambda path: convert_checkpoint(str(path), 'hvt_ti_1', str(out_dir)),
    }


def _read_as(c: Caches, route: str, path: Path) -> Path:
    if 'release fallback' in route:
        return c.torch_checkpoints / 'hvt_ti_1.pth'
    if 'hub pytorch_model.bin' in route:
        return c.hub_snapshot(hub_id('hvt_ti_1')) / 'pytorch_model.bin'
    return path


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
        with pytest.raises(CheckpointReadError) as info:
            load(path)
        message = str(info.value)
        assert str(_read_as(caches, route, path)) in message and 'system' in message, route
        if route in TIMM_ROUTES:  # timm's refusal, with its remedy, after the file name
            assert 'weights_only=True blocked loading' in message, route
        else:
            assert isinstance(info.value, UnsafeCheckpointError) and 'Refused to load' in message, route
        assert not marker.exists(), route
    assert not (tmp_path / 'out').exists()


def test_cli_convert_refuses_code(malicious, tmp_path, capsys):
    path, marker = malicious
    assert cli.main(['convert', str(path), '--model', 'hvt_ti_1', '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert 'Refused to load' in err and str(path) in err
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
            if route in CACHE_ROUTES and path.suffix != '.pth':
                continue  # release files and the hub's pytorch_model.bin are PyTorch files
            with pytest.raises(CheckpointReadError) as info:
                load(path)
            message = str(info.value)
            assert str(_read_as(caches, route, path)) in message, (kind, route)
            if route in TIMM_ROUTES:  # timm's / torch's own error, the file named before it
                assert message.startswith(f'Cannot read checkpoint {path}: '), (kind, route)
                assert str(info.value.__cause__).strip() in message, (kind, route)
                assert isinstance(info.value, type(info.value.__cause__)), (kind, route)  # caught as before
            else:
                assert 'truncated or not a' in message, (kind, route)


def test_missing_file_is_named(caches, tmp_path):
    missing = tmp_path / 'nowhere.pth'
    for route, load in _routes(caches, tmp_path / 'out').items():
        if 'release fallback' in route:
            continue
        with pytest.raises((FileNotFoundError, CheckpointReadError), match='nowhere.pth'):
            load(missing)


# timm_hvt's wrapper of timm's load_state_dict is installed whenever timm is imported: other models must keep
# timm's behaviour, only gaining the file name in front of timm's / torch's error when the file cannot be read


def _timm_error(path: Path, **kwargs) -> Exception:
    """The error timm's own load_state_dict, without timm_hvt's wrapper, raises for `path`."""
    unwrapped = timm.models._helpers.load_state_dict.timm_hvt_wrapped
    with pytest.raises(Exception) as info:
        unwrapped(str(path), **kwargs)
    return info.value


def test_other_timm_models_load_as_in_timm(tmp_path):
    model, source = timm.create_model('test_vit'), timm.create_model('test_vit')
    path = tmp_path / 'vit.pth'
    torch.save({'state_dict': source.state_dict(), 'epoch': 3}, path)
    result = timm.models.load_checkpoint(model, str(path))
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_other_timm_models_keep_torchs_refusal_naming_the_file(tmp_path):
    model, source = timm.create_model('test_vit'), timm.create_model('test_vit')
    path = tmp_path / 'legacy.pth'
    # an old training checkpoint: a numpy scalar next to the weights, which weights_only=True does not allow
    torch.save({'state_dict': source.state_dict(), 'best_metric': np.float64(71.5)}, path)
    with pytest.raises(RuntimeError) as info:
        timm.models.load_checkpoint(model, str(path))
    original = _timm_error(path)
    message = str(info.value)
    assert message == f'Cannot read checkpoint {path}: {original}'
    assert 'Unsupported globals' in message and 'retry with weights_only=False' in message  # torch's / timm's
    assert type(info.value.__cause__) is type(original) and str(info.value.__cause__) == str(original)
    assert 'Refused' not in message

    # the caller trusts this file and opts out, as timm allows: it loads (the only weights_only=False here is
    # timm's, on the caller's request)
    timm.models.load_checkpoint(model, str(path), weights_only=False)
    assert torch.equal(model.state_dict()['head.weight'], source.state_dict()['head.weight'])


class GoneFromMain:
    """Pickled as __main__.GoneFromMain, then removed: unpickling it fails (with weights_only=False)."""


def test_weights_only_false_is_left_to_torch(tmp_path, monkeypatch):
    model = timm.create_model('test_vit')
    path = tmp_path / 'custom.pth'
    with monkeypatch.context() as m:
        m.setattr(GoneFromMain, '__module__', '__main__')
        m.setattr(sys.modules['__main__'], 'GoneFromMain', GoneFromMain, raising=False)
        torch.save({'state_dict': model.state_dict(), 'extra': GoneFromMain()}, path)
    # the caller opted out of weights_only: torch's own unpickling error comes through unchanged, no "Refused"
    original = _timm_error(path, weights_only=False)
    with pytest.raises(type(original)) as info:
        timm.models.load_checkpoint(model, str(path), weights_only=False)
    assert type(info.value) is type(original) and str(info.value) == str(original)
    assert 'GoneFromMain' in str(info.value)
    # with the default weights_only=True: timm's refusal naming the class, the file named in front
    with pytest.raises(RuntimeError, match='Unsupported globals: .*__main__.GoneFromMain') as info:
        timm.models.load_checkpoint(model, str(path))
    assert str(path) in str(info.value)
