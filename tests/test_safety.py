"""timm-hvt is a plain timm plugin: importing it changes nothing of timm, torch or huggingface_hub, and other models
load and fail exactly as without it. No route that reads a checkpoint runs code hidden in it, and damaged files fail
with an error that names the file on the routes timm-hvt drives."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from _weights_helpers import (
    TINY, Caches, caches, offline_env, release_url, save_authors_checkpoint, save_hub_weights,
    save_malicious_checkpoint, unpickle_without_safeguards,
)
from timm_hvt import checkpoint_filter_fn, cli
from timm_hvt.convert import convert_checkpoint

PLUGIN_IMPORT = r'''
import inspect, json, sys
import huggingface_hub, timm, timm.data, timm.layers, timm.models, torch, torch.hub, torch.serialization

def ids(namespace, prefix):
    out = {}
    for name, value in list(vars(namespace).items()):
        if callable(value) or isinstance(value, (staticmethod, classmethod, property)):
            out[prefix + name] = id(value)
        if inspect.isclass(value) and value.__module__.startswith(('timm', 'torch', 'huggingface_hub')):
            out.update({f'{prefix}{name}.{k}': id(v) for k, v in vars(value).items() if callable(v)})
    return out

def snapshot():
    found = ids(torch.nn.Module, 'torch.nn.Module.')
    for mod_name, module in list(sys.modules.items()):
        if module is not None and mod_name.split('.')[0] in ('timm', 'huggingface_hub') \
                or mod_name in ('torch.hub', 'torch.serialization'):
            found.update(ids(module, mod_name + '.'))
    return found

def other_model_errors():
    errors = []
    for path in sys.argv[1:]:
        try:
            timm.create_model('deit_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=path))
            errors.append('loaded')
        except Exception as e:
            errors.append(f'{type(e).__module__}.{type(e).__qualname__}: {e}')
    return errors

before, errors_before = snapshot(), other_model_errors()
import timm_hvt
after, errors_after = snapshot(), other_model_errors()
print(json.dumps(dict(
    checked=len(before), changed=sorted(k for k in before if after.get(k) != before[k]),
    registered=len(timm.list_models('hvt_*')), errors_before=errors_before, errors_after=errors_after)))
'''


def test_import_registers_and_changes_nothing(tmp_path):
    # one fresh interpreter (autoload off): what timm, torch and huggingface_hub hold, and how another model's
    # corrupt and wrong-keys files fail, before and after `import timm_hvt`
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint ' * 64)
    wrong_keys = tmp_path / 'wrong_keys.pth'
    torch.save({'model': {'not_a_deit_key': torch.zeros(3)}}, wrong_keys)
    env = dict(os.environ, **offline_env(tmp_path), TIMM_HVT_AUTOLOAD='0')
    out = subprocess.run([sys.executable, '-c', PLUGIN_IMPORT, str(corrupt), str(wrong_keys)],
                         capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result['registered'] == 10
    assert result['checked'] > 5000  # the snapshot saw timm's, torch's and huggingface_hub's callables
    assert result['changed'] == []
    assert result['errors_after'] == result['errors_before']
    assert 'not_a_deit_key' in result['errors_before'][1] and 'loaded' not in result['errors_before']


def _routes(c: Caches, out_dir: Path):
    """Every way a checkpoint file gets into an HVT model, each reading `path`."""
    def pretrained_release(path: Path):
        c.put_release(release_url('hvt_ti_1'), path)
        return timm.create_model('hvt_ti_1', pretrained=True, **TINY)

    def hf_hub_name_bin(path: Path):
        cfg = timm.models.get_pretrained_cfg('hvt_ti_1.in1k').to_dict(remove_source=True)
        config = dict(architecture=cfg.pop('architecture'), num_classes=1000, model_args=TINY, pretrained_cfg=cfg)
        c.put_hub_repo('someone/hvt-bin', {'pytorch_model.bin': path, 'config.json': json.dumps(config).encode()})
        return timm.create_model('hf-hub:someone/hvt-bin', pretrained=True)

    def load_checkpoint(path: Path):
        return timm.models.load_checkpoint(
            timm.create_model('hvt_ti_1', **TINY), str(path), filter_fn=checkpoint_filter_fn)

    return {
        'pretrained=True (release fallback)': pretrained_release,
        'hf-hub: name (pytorch_model.bin)': hf_hub_name_bin,
        'pretrained_cfg_overlay file (--pretrained-path)': lambda path: timm.create_model(
            'hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY),
        'checkpoint_path (--initial-checkpoint)': lambda path: timm.create_model(
            'hvt_ti_1', checkpoint_path=str(path), **TINY),
        'timm.models.load_checkpoint': load_checkpoint,
        'convert': lambda path: convert_checkpoint(str(path), 'hvt_ti_1', str(out_dir)),
    }


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


@pytest.mark.smoke  # also run at the dependency floors
def test_no_route_runs_code(caches, malicious, tmp_path):
    path, marker = malicious
    caches.offline()
    for route, load in _routes(caches, tmp_path / 'out').items():
        with pytest.raises((pickle.UnpicklingError, RuntimeError)) as info:
            load(path)
        # refused for the global that would run the command (torch < 2.6 names it in the chained cause)
        assert 'system' in f'{info.value} {info.value.__cause__}', route
        assert not marker.exists(), route
    assert not (tmp_path / 'out').exists()


def test_cli_convert_refuses_code_in_one_line(malicious, tmp_path, capsys):
    path, marker = malicious
    assert cli.main(['convert', str(path), '--model', 'hvt_ti_1', '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err and str(path) in err
    assert not marker.exists() and not (tmp_path / 'out').exists()


def _damaged_files(tmp_path: Path):
    good = tmp_path / 'good.pth'
    save_authors_checkpoint(good, 'hvt_ti_1', **TINY)
    data = good.read_bytes()
    safetensors_data = save_hub_weights(tmp_path / 'good.safetensors', {'pos_embed': torch.zeros(3)}).read_bytes()
    files = {
        'truncated.pth': data[:len(data) // 2],
        'garbage.pth': b'not a checkpoint at all ' * 40,
        'empty.pth': b'',
        'truncated.safetensors': safetensors_data[:20],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return [tmp_path / name for name in files]


@pytest.mark.parametrize('route', ['pretrained=True (release fallback)',
                                   'pretrained_cfg_overlay file (--pretrained-path)', 'convert'])
def test_damaged_files_fail_naming_the_file(caches, tmp_path, route):
    caches.offline()
    load = _routes(caches, tmp_path / 'out')[route]
    for path in _damaged_files(tmp_path):
        if 'release' in route and path.suffix != '.pth':
            continue  # release files are PyTorch files
        with pytest.raises(Exception) as info:
            load(path)
        read_as = caches.torch_checkpoints / 'hvt_ti_1.pth' if 'release' in route else path
        # a file in the cache is named by the error itself (test_pretrained.py), a given file by a note
        said = [str(info.value), *getattr(info.value, '__notes__', ())]
        assert any(str(read_as) in text for text in said), (route, path.name)
    assert not (tmp_path / 'out').exists()


def test_missing_file_is_named(caches, tmp_path):
    missing = str(tmp_path / 'nowhere.pth')
    with pytest.raises(FileNotFoundError) as info:
        timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=dict(file=missing), **TINY)
    assert any(missing in note for note in info.value.__notes__)
    assert cli.main(['convert', missing, '--model', 'hvt_ti_1', '--out', str(tmp_path / 'out')]) == 1
