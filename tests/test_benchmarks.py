"""benchmarks/bench_hvt.py --quick writes every file, with the rows and columns a reader looks for. No timing is
asserted: --quick runs batch 2, one round, on a shared machine."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401  the bench extra: missing, the test fails instead of skipping
import onnxruntime  # noqa: F401
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ['hvt_ti_1', 'deit_tiny_patch16_224']  # a subset keeps the test short; hvt_s_* run in the full benchmark


@pytest.fixture(scope='module')
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.bench_hvt', '--quick', '--no-progress',
                           '--models', ','.join(MODELS), '--out', str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def test_quick_rows_and_columns(out):
    res = pd.read_csv(out / 'results.csv', keep_default_na=False)
    assert (res.error == '').all(), res[res.error != ''][['model', 'impl', 'error']]
    groups = set(res.group)
    assert {'vs_authors', 'train', 'models', 'batch1', 'sweep'} <= groups
    assert set(res[res.group == 'models'].model) == set(MODELS)
    for impl, group in (('authors', 'vs_authors'), ('authors', 'train'), ('onnxruntime', 'batch1'),
                        ('torch.matmul', 'vs_authors')):
        assert impl in set(res[res.group == group].impl), (impl, group)
    models = res[res.group == 'models']
    for col in ('img_per_s', 'img_per_s_min', 'img_per_s_max', 'gemm_frac', 'peak_mb', 'gmacs', 'params_m'):
        assert (pd.to_numeric(models[col]) > 0).all(), col
    assert sorted(set(res[res.group == 'sweep'].img_size)) == [224, 288]

    tg = pd.read_csv(out / 'targets.csv', keep_default_na=False)
    assert len(tg) == 8 and set(tg.met) <= {'yes', 'no', 'not measured'}
    # --quick compiles nothing, and the subset leaves out hvt_s_*: exactly those rows are not measured
    assert list(tg.met == 'not measured') == ['compile' in t or 'hvt_s_' in t for t in tg.iloc[:, 0]]
    # ours against the authors': never slower, in every mode (a larger lead is out of reach on the same kernels)
    vs = tg[tg.iloc[:, 0].str.contains('ours / authors')]
    assert len(vs) == 6 and (pd.to_numeric(vs.goal) == 1.0).all(), vs

    prof = pd.read_csv(out / 'profile.csv')
    assert set(prof.impl) == {'ours', 'authors'} and 'GEMM' in set(prof.ops)


def test_quick_report_files(out):
    env = json.loads((out / 'env.json').read_text())
    assert '--quick' in env['command'] and env['cpu']
    if platform.libc_ver()[0] == 'glibc' and 'glibc.malloc.' not in os.environ.get('GLIBC_TUNABLES', ''):
        # the script restarted itself with fixed malloc thresholds
        assert 'glibc.malloc.mmap_threshold=' in env['malloc'], env['malloc']
    md = (out / 'results.md').read_text()
    for text in ('## Targets', 'ours / authors', '## Batch 1 latency', '## Where the time goes', env['command']):
        assert text in md, text
    for png in ('throughput_vs_gmacs.png', 'throughput_vs_resolution.png'):
        assert (out / png).read_bytes()[:4] == b'\x89PNG' and png in md
