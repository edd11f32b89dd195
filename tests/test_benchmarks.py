"""`python -m benchmarks.bench_cpu --quick` writes every file, with the rows and columns a reader looks for, and its
exact routes are exact. No timing is asserted: --quick runs batch 1, one round, on a shared machine."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import nncf  # noqa: F401  the test extra: missing, the test fails instead of skipping
import openvino  # noqa: F401
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# --quick leaves out torch.compile; the full run adds hvt_s_4, DeiT-S and PiT-S
ROUTES = ['torch eager fp32', 'torch bf16 autocast', 'ONNX Runtime fp32', 'OpenVINO f32', 'OpenVINO default precision',
          'OpenVINO INT8 (NNCF), head fp32, no SmoothQuant', 'torch training step fp32']
INT8 = ['OpenVINO INT8 (NNCF), every layer', 'OpenVINO INT8 (NNCF), head fp32',
        'OpenVINO INT8 (NNCF), every layer, no SmoothQuant']
EXACT = ['ONNX Runtime fp32', 'OpenVINO f32']


@pytest.fixture(scope='module')
def out(tmp_path_factory):
    out, home = tmp_path_factory.mktemp('bench'), tmp_path_factory.mktemp('home')
    env = {k: v for k, v in os.environ.items() if k not in ('TORCH_HOME', 'HF_HOME', 'HF_HUB_CACHE', 'XDG_CACHE_HOME')}
    env['HOME'] = str(home)  # empty caches: no pretrained weights to find
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.bench_cpu', '--quick', '--models', 'hvt_ti_1', '--out',
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def test_quick_speed_rows(out):
    speed = pd.read_csv(out / 'cpu_routes.csv', keep_default_na=False)
    assert (speed.error == '').all(), speed[speed.error != ''][['model', 'route', 'error']]
    assert sorted(zip(speed.model, speed.route)) == sorted((m, r) for m in ('hvt_ti_1', 'authors_hvt_ti_1')
                                                           for r in ROUTES)
    for col in ('ms', 'gflops', 'peak_frac'):
        assert (pd.to_numeric(speed[col]) > 0).all(), col
    ours = speed[speed.model == 'hvt_ti_1']
    assert (pd.to_numeric(ours.vs_authors) > 0).all() and (speed[speed.model != 'hvt_ti_1'].vs_authors == '').all()
    infer = speed[speed.route != 'torch training step fp32']
    assert (pd.to_numeric(infer[infer.route == 'torch eager fp32'].vs_eager) == 1).all()
    diff = pd.to_numeric(infer.rel_logit_diff_random_weights)
    assert (diff[infer.route.isin(EXACT)] < 1e-5).all() and (diff < 0.5).all(), infer


def test_quick_accuracy_and_goals(out):
    acc = pd.read_csv(out / 'cpu_accuracy.csv')
    assert set(acc.model) == {'digits hvt_ti_2'}  # no pretrained weights in the empty caches
    assert list(acc.route) == [r for r in ROUTES[1:] if 'train' not in r] + INT8
    assert (acc[acc.route.isin(EXACT)].rel_logit_err < 1e-5).all() and acc.top1.between(0, 1).all()
    assert (acc.top1_fp32 == acc.top1_fp32[0]).all()
    goals = pd.read_csv(out / 'cpu_goals.csv', keep_default_na=False)
    assert set(goals.met) <= {'yes', 'no', 'not measured'}
    # no DeiT-S in --models, no torch.compile in --quick: only these ours-against-authors goals are measured
    assert sorted(goals[goals.met != 'not measured'].route) == ['torch eager fp32', 'torch training step fp32']


def test_quick_report(out):
    md = (out / 'cpu_routes.md').read_text()
    for text in ('## Goals', '## Time per batch', '## Accuracy cost', 'FMA units', 'none present',
                 'bench_cpu --quick --models hvt_ti_1'):
        assert text in md, text
    if platform.libc_ver()[0] == 'glibc' and 'glibc.malloc.' not in os.environ.get('GLIBC_TUNABLES', ''):
        assert 'glibc.malloc.mmap_threshold=' in md  # the script restarted itself with fixed malloc thresholds
