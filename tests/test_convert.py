"""`timm-hvt convert` writes a verified hub folder that timm and transformers load; `timm-hvt push` uploads it
(here: to fakes only)."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from timm.data import ImageNetInfo
from timm.layers import resample_abs_pos_embed

from _weights_helpers import REVISION, assert_weights, caches, hub_id, offline_env, pinned, save_authors_checkpoint
from timm_hvt import CheckpointMismatchError, cli
from timm_hvt.convert import convert_checkpoint


@pytest.fixture(scope='module')
def ti_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('release') / 'hvt_ti_1.pth'
    return path, save_authors_checkpoint(path, 'hvt_ti_1', seed=5)


@pytest.fixture(scope='module')
def ti_folder(ti_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp('converted') / 'hvt_ti_1.in1k'
    assert cli.main(['convert', str(ti_checkpoint[0]), '--model', 'hvt_ti_1', '--out', str(out)]) == 0
    return out


def test_convert_writes_a_hub_folder(ti_folder):
    assert sorted(p.name for p in ti_folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((ti_folder / 'config.json').read_text())
    assert config['architecture'] == 'hvt_ti_1' and config['num_classes'] == 1000
    assert 'num_classes' not in config.get('model_args', {})  # stated once, at the top level
    names = ImageNetInfo().label_descriptions(as_dict=True)
    assert config['label_names'] == [names[synset] for synset in ImageNetInfo().label_names()]
    assert config['pretrained_cfg']['tag'] == 'in1k' and config['pretrained_cfg']['license'] == 'apache-2.0'
    card = (ti_folder / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and 'license: apache-2.0' in card
    assert 'https://arxiv.org/abs/2103.10619' in card
    assert '| hvt_ti_1.in1k | 5.74 | 0.64 | 69.64 | 89.40 |' in card
    assert "timm.create_model('hf-hub:timm-hvt/hvt_ti_1.in1k', pretrained=True)" in card
    assert 'pip install .' in card and 'pip install timm-hvt' not in card  # not on PyPI: where it installs from
    assert '@inproceedings{' in card and 'Hierarchical Pooling' in card


def test_converted_folder_is_what_pretrained_loads(ti_folder, ti_checkpoint, caches):
    caches.put_hub_repo(hub_id('hvt_ti_1'), {p.name: p for p in ti_folder.iterdir()}, commit=REVISION)
    caches.offline()
    assert_weights(timm.create_model('hvt_ti_1', pretrained=True, pretrained_cfg_overlay=pinned('hvt_ti_1')),
                   ti_checkpoint[1])
    assert_weights(timm.create_model(f'hf-hub:{hub_id("hvt_ti_1")}', pretrained=True), ti_checkpoint[1])


def _hvt_ti_1_params(img_size: int, num_classes: int) -> int:
    """hvt_ti_1's parameter count from the spec's shapes: D=192, patch 16, 12 blocks of MLP 4D, one pooling
    (after block 0, kernel 3 stride 2) with its own position embedding."""
    d, tokens = 192, (img_size // 16) ** 2
    pooled = (tokens - 3) // 2 + 1
    # two LayerNorms, qkv, attention proj, mlp fc1, fc2
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    patch_embed, norm, head = 3 * 16 * 16 * d + d, 2 * d, d * num_classes + num_classes
    return patch_embed + tokens * d + 12 * block + pooled * d + norm + head


def test_convert_keeps_a_fine_tuned_head_and_resolution(tmp_path):
    source = tmp_path / 'finetuned.pth'
    sd = save_authors_checkpoint(source, 'hvt_ti_1', img_size=288, num_classes=10)
    result = convert_checkpoint(str(source), 'hvt_ti_1', str(tmp_path / 'out'), repo_id='me/hvt-ft')
    assert result.max_abs_diff <= 1e-5
    # the derivation gives the paper's 5.74M at 224 px / 1000 classes; at 288 px (324 tokens, 161 after the
    # pooling) with 10 classes it gives 5,581,450, the card's 5.58
    assert f'{_hvt_ti_1_params(224, 1000) / 1e6:.2f}' == '5.74'
    assert round(result.params_m * 1e6) == _hvt_ti_1_params(288, 10) == 5_581_450
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['num_classes'] == 10 and config['model_args'] == {'img_size': [288, 288]}
    assert 'label_names' not in config  # not ImageNet's head
    model = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True)
    assert model.num_classes == 10 and model.pos_embed.shape == (1, 324, 192)
    assert_weights(model, sd)
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert '| hvt_ti_1.in1k | 5.58 |' in card and '| - | - |' in card and 'hf-hub:me/hvt-ft' in card


def test_convert_takes_the_alias_the_paper_uses(tmp_path, capsys):
    source = tmp_path / 'scale_hvt_ti_4.pth'
    save_authors_checkpoint(source, 'hvt_s_4', seed=2)
    out = tmp_path / 'out'
    assert cli.main(['convert', str(source), '--model', 'scale_hvt_ti_4', '--out', str(out)]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'hvt_s_4' and config['pretrained_cfg']['tag'] == 'in1k'
    assert 'hvt_s_4.in1k' in capsys.readouterr().out


@pytest.mark.parametrize('target', [(384, 384), (320, 224)])
def test_converted_non_square_model_reloads_at_another_size(target, tmp_path):
    """A checkpoint fine-tuned at 224x320 (timm's train.py allows it): convert is told that size, the folder records
    it, and timm's local-dir: route moves the weights from the 14x20 grid to another, also to the 20x14 one of as
    many tokens."""
    torch.manual_seed(0)
    source = timm.create_model('hvt_ti_1', img_size=(224, 320))
    path = tmp_path / 'finetuned.pth'
    torch.save({'state_dict': source.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match='280'):  # 280 tokens: no square grid, and no size given
        convert_checkpoint(str(path), 'hvt_ti_1', str(tmp_path / 'unsized'))
    result = convert_checkpoint(str(path), 'hvt_ti_1', str(tmp_path / 'out'), img_size=(224, 320))
    assert result.max_abs_diff <= 1e-5
    model = timm.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True, img_size=target)
    grid = [target[0] // 16, target[1] // 16]
    torch.testing.assert_close(model.pos_embed, resample_abs_pos_embed(source.pos_embed, grid, [14, 20], 0))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    return err


def test_convert_errors_are_one_line(ti_checkpoint, ti_folder, tmp_path, capsys):
    source = str(ti_checkpoint[0])
    assert cli.main(['convert', source, '--model', 'hvt_ti_2', '--out', str(tmp_path / 'a')]) == 1
    error = _one_line_error(capsys)
    assert 'does not fit hvt_ti_2' in error and '[0]' in error and '[0, 6]' in error
    assert cli.main(['convert', source, '--model', 'vit_nope', '--out', str(tmp_path / 'b')]) == 1
    error = _one_line_error(capsys)
    assert 'vit_nope' in error and 'hvt_ti_1' in error and 'scale_hvt_ti_4' in error  # what was given, what works
    missing = str(tmp_path / 'nope.pth')
    assert cli.main(['convert', missing, '--model', 'hvt_ti_1', '--out', str(tmp_path / 'c')]) == 1
    error = _one_line_error(capsys)
    assert 'not found' in error and missing in error
    assert cli.main(['convert', source, '--model', 'hvt_ti_1', '--out', str(ti_folder)]) == 1
    assert 'exists and is not empty' in _one_line_error(capsys)
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


class _FakeHfApi:
    calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))
        return type('RepoUrl', (), {'repo_id': repo_id})()

    def upload_folder(self, **kwargs):
        self.calls.append(('upload_folder', kwargs))
        return type('CommitInfo', (), {'oid': 'c0ffee' * 6 + 'c0ff'})()


def test_push(ti_folder, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, 'HfApi', _FakeHfApi)
    _FakeHfApi.calls.clear()
    assert cli.main(['push', str(ti_folder), '--repo-id', 'me/hvt_ti_1.in1k', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'Would upload to https://huggingface.co/me/hvt_ti_1.in1k' in out
    assert all(name in out for name in ('model.safetensors', 'config.json', 'README.md'))
    assert _FakeHfApi.calls == []

    assert cli.main(['push', str(ti_folder), '--repo-id', 'me/hvt_ti_1.in1k', '--private']) == 0
    assert f'me/hvt_ti_1.in1k@{"c0ffee" * 6}c0ff' in capsys.readouterr().out.splitlines()  # the commit, to pin
    (create, repo_id, create_kwargs), (upload, upload_kwargs) = _FakeHfApi.calls
    assert (create, repo_id, create_kwargs['private'], create_kwargs['exist_ok']) == ('create_repo', 'me/hvt_ti_1.in1k', True, True)
    assert upload == 'upload_folder' and upload_kwargs['folder_path'] == str(ti_folder)
    assert sorted(upload_kwargs['allow_patterns']) == ['README.md', 'config.json', 'model.safetensors']


def test_push_errors_are_one_line(ti_folder, tmp_path, caches, capsys):
    caches.offline()
    assert cli.main(['push', str(ti_folder), '--repo-id', 'me/x']) == 1  # the real client, offline
    assert 'offline' in _one_line_error(capsys).lower()
    (tmp_path / 'half').mkdir()
    (tmp_path / 'half' / 'config.json').write_text('{}')
    assert cli.main(['push', str(tmp_path / 'half'), '--repo-id', 'me/x', '--dry-run']) == 1
    assert 'lacks model.safetensors, README.md' in _one_line_error(capsys)
    assert cli.main(['push', str(tmp_path / 'nowhere'), '--repo-id', 'me/x', '--dry-run']) == 1
    error = _one_line_error(capsys)
    assert 'not found' in error and str(tmp_path / 'nowhere') in error


TRANSFORMERS_LOAD = r'''
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

folder, images_file = sys.argv[1:]
model = AutoModelForImageClassification.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(torch.load(images_file, weights_only=True)).logits
classify = pipeline('image-classification', model=folder)
predictions = classify(Image.new('RGB', (300, 260), (200, 120, 40)), top_k=5)
print(json.dumps(dict(logits=logits.tolist(), labels=[p['label'] for p in predictions])))
'''


def test_transformers_loads_the_folder(ti_folder, tmp_path):
    # a fresh interpreter that never imports timm itself: transformers' timm wrapper builds the model (the
    # start-up hook registers HVT when transformers imports timm), and its pipeline labels with ImageNet names
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    torch.save(images, tmp_path / 'images.pt')
    env = dict(os.environ, **offline_env(tmp_path), TRANSFORMERS_OFFLINE='1')
    env.pop('TIMM_HVT_AUTOLOAD', None)
    out = subprocess.run([sys.executable, '-c', TRANSFORMERS_LOAD, str(ti_folder), str(tmp_path / 'images.pt')],
                         capture_output=True, text=True, env=env, timeout=280, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    timm_model = timm.create_model(f'local-dir:{ti_folder}', pretrained=True).eval()
    with torch.no_grad():
        expected = timm_model(images)
    diff = (torch.tensor(result['logits']) - expected).abs().max().item()
    assert diff <= 1e-5 * max(1.0, expected.abs().max().item())
    names = set(ImageNetInfo().label_descriptions(as_dict=True).values())
    assert len(result['labels']) == 5 and all(label in names for label in result['labels'])
