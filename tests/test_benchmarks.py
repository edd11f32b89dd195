"""The benchmark entry point (benchmarks/bench_hvt.py): `--quick` writes every file, with a row for every model
and configuration and sane values. Nothing here asserts a timing."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / 'benchmarks' / 'bench_hvt.py'
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

from hvtbench import models as bm  # noqa: E402
from hvtbench.measure import Case, LiveTensorBytes, run_group  # noqa: E402

from timm_hvt.paper import PAPER_RESULTS  # noqa: E402

QUICK_BATCH = 2  # the large batch of --quick
QUICK_SIZES = (224, 288)
FILES = ('results.csv', 'gemm.csv', 'targets.csv', 'profile.csv', 'env.json', 'results.md',
         'throughput_vs_gmacs.png', 'throughput_vs_resolution.png')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    pytest.importorskip('matplotlib')
    out = tmp_path_factory.mktemp('bench_quick')
    proc = subprocess.run([sys.executable, str(BENCH), '--quick', '--out', str(out)], capture_output=True, text=True,
                          timeout=900, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _csv(path: Path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(1000)
def test_quick_writes_every_file(quick):
    for name in FILES:
        p = quick / name
        assert p.is_file() and p.stat().st_size > 0, name
    for name in FILES:
        if name.endswith('.png'):
            assert (quick / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name


@pytest.mark.timeout(1000)
def test_quick_has_every_model_row(quick):
    rows = _csv(quick / 'results.csv')
    assert rows, 'no rows'

    def find(**want):
        return [r for r in rows if all(r[k] == str(v) for k, v in want.items())]

    B = QUICK_BATCH
    expected = []
    for n in bm.ALL_MODELS:
        for dtype in ('fp32', 'bf16'):
            expected += [
                dict(group=f'infer_b{B}_{dtype}', model=n, task='infer', batch=B, dtype=dtype, mode='eager',
                     attn='fused'),
                dict(group='infer_b1', model=n, task='infer', batch=1, dtype=dtype, mode='eager', attn='fused'),
                dict(group=f'train_b{B}', model=n, task='train', batch=B, dtype=dtype, attn='fused'),
                dict(group='train_b1', model=n, task='train', batch=1, dtype=dtype, attn='fused'),
            ]
    for n in bm.TARGET_HVT:
        expected += [dict(group=f'infer_b{B}_fp32', model=n, task='infer', attn='unfused'),
                     dict(group=f'train_b{B}', model=n, task='train', dtype='fp32', attn='unfused')]
    for n in bm.SWEEP_MODELS:
        expected += [dict(group='sweep_b1', model=n, img_size=s) for s in QUICK_SIZES]
    for want in expected:
        got = find(**want)
        assert len(got) == 1, (want, len(got))
        r = got[0]
        assert r['error'] == '', (want, r['error'])
        for col in ('img_per_s', 'img_per_s_min', 'img_per_s_max', 'ms_per_step', 'params_m', 'gmacs', 'gemm_frac'):
            v = float(r[col])
            assert math.isfinite(v) and v > 0, (want, col, r[col])
        assert float(r['img_per_s_min']) <= float(r['img_per_s']) <= float(r['img_per_s_max'])
        assert int(r['samples']) >= 1
        if r['group'] in (f'infer_b{B}_fp32', f'infer_b{B}_bf16', f'train_b{B}') and r['mode'] == 'eager':
            # weights plus at least the input and the logits
            assert float(r['peak_mem_mb']) * 2 ** 20 > float(r['params_m']) * 1e6 * 4, want
    assert set(r['model'] for r in rows) == set(bm.ALL_MODELS)


@pytest.mark.timeout(1000)
def test_quick_values_are_sane(quick):
    rows = _csv(quick / 'results.csv')
    at224 = [r for r in rows if r['img_size'] == '224']
    for r in at224:
        if r['model'] in PAPER_RESULTS:  # HVT's MACs are the paper's
            assert round(float(r['gmacs']), 2) == PAPER_RESULTS[r['model']].gmacs, r
            assert float(r['paper_top1']) == PAPER_RESULTS[r['model']].top1
    gm = {r['model']: float(r['gmacs']) for r in at224}
    assert gm['deit_small_patch16_224'] == pytest.approx(4.60, abs=0.01)
    assert gm['deit_tiny_patch16_224'] == pytest.approx(1.25, abs=0.01)
    for n in bm.HVT_MODELS:  # pooling stages only ever remove work
        s = 'hvt_s' if n.startswith('hvt_s') else 'hvt_ti'
        assert gm[n] <= gm[f'{s}_0'] + 1e-9
    # the sweep: cost grows with resolution, and HVT stays below the DeiT of its width
    sweep = [r for r in rows if r['group'] == 'sweep_b1']
    by = {(r['model'], int(r['img_size'])): float(r['gmacs']) for r in sweep}
    for n in bm.SWEEP_MODELS:
        assert by[(n, QUICK_SIZES[0])] < by[(n, QUICK_SIZES[1])], n
    for s in QUICK_SIZES:
        assert by[('hvt_s_4', s)] < by[('deit_small_patch16_224', s)]
        assert by[('hvt_ti_1', s)] < by[('deit_tiny_patch16_224', s)]

    gemm = _csv(quick / 'gemm.csv')
    for dtype in ('fp32', 'bf16'):
        g = [r for r in gemm if r['dtype'] == dtype]
        assert g and all(float(r['gflops']) > 0 for r in g)
        assert sum(r['reference'] == 'True' for r in g) == 1
        assert max(float(r['gflops']) for r in g) == float(next(r for r in g if r['reference'] == 'True')['gflops'])

    targets = _csv(quick / 'targets.csv')
    assert len(targets) == 2 + 2 * len(bm.TARGET_HVT) + 2
    for t in targets:
        if 'compile' in t['target']:
            assert t['met'] == 'not measured'  # --quick compiles nothing
        else:
            assert t['met'] in ('yes', 'no') and float(t['measured']) > 0, t
        if 'eager fraction' in t['target']:  # the bound set by the linears' standalone GEMM rates
            assert float(t['ceiling']) > float(t['measured']), t

    prof = _csv(quick / 'profile.csv')
    for n in ('hvt_s_1', 'deit_small_patch16_224'):
        p = {r['category']: r for r in prof if r['model'] == n}
        assert float(p['total']['ms_per_batch']) > 0
        lin = next(v for k, v in p.items() if k.startswith('linear'))
        assert float(lin['gmacs_per_batch']) > 0 and float(lin['gflops']) > 0
        parts = sum(float(v['ms_per_batch']) for k, v in p.items() if k != 'total')
        assert parts == pytest.approx(float(p['total']['ms_per_batch']), rel=0.01)

    env = json.loads((quick / 'env.json').read_text())
    for key in ('date', 'hardware', 'cpu', 'threads', 'torch', 'timm', 'command', 'load_avg_start', 'duration_s'):
        assert env.get(key), key
    assert '--quick' in env['command']

    md = (quick / 'results.md').read_text()
    for section in ('## Targets', '## Inference', '## Training step', '## Fused attention', '## Resolution sweep',
                    '## GEMM rate', '## Where the time goes', 'throughput_vs_gmacs.png',
                    'throughput_vs_resolution.png', env['hardware']):
        assert section in md, section
    for n in bm.ALL_MODELS:
        assert f'| {n} |' in md, n


def test_live_tensor_bytes_counts_peak_not_total():
    keep = torch.zeros(1000)
    with LiveTensorBytes([keep]) as mem:
        a = torch.ones(2000)  # 8000 bytes
        b = a * 2  # 8000 more, both alive
        del a, b
        c = torch.ones(1000)  # 4000, after the others were freed
        del c
    assert mem.baseline == 4000
    assert mem.peak == 16000
    assert mem.peak_total == 20000
    assert mem.current == 0


def test_run_group_interleaves_rounds_and_survives_errors():
    calls = []

    def make(name, fail=False):
        def step():
            calls.append(name)
            if fail and len([c for c in calls if c == name]) > 1:
                raise RuntimeError('boom')
        return Case(meta=dict(kind='model', model=name), step=step, work=1, device=torch.device('cpu'))

    cases = [make('a'), make('b'), make('c', fail=True)]
    run_group(cases, rounds=3, warmup=1)
    assert calls[:3] == ['a', 'b', 'c']  # warm-ups
    assert calls[3:6] == ['a', 'b', 'c']  # round 0
    assert calls[6:8] == ['b', 'a']  # round 1 starts one further on, without the failed case
    assert cases[2].error.startswith('RuntimeError') and cases[2].samples == []
    assert len(cases[0].samples) == len(cases[1].samples) == 3


def test_cases_a_target_compares_run_back_to_back():
    """Per-round ratios pair the two cases' samples of one round: they must be taken one after the other."""
    import bench_hvt
    plan = bench_hvt.Plan()
    stand_ins = {n: torch.nn.Linear(1, 1) for n in plan.models}  # building the groups runs nothing
    groups = bench_hvt.build_groups(plan, torch.device('cpu'), stand_ins, {}, only=('infer_fp32', 'train'))
    for group, cases, _ in groups:
        order = [(c.meta.get('model'), c.meta['dtype'], c.meta.get('attn'), c.meta.get('mode'), c.meta['kind'])
                 for c in cases]

        def at(model, attn='fused', mode='eager', kind='model'):
            return order.index((model, 'fp32', attn, mode, kind))
        if group.startswith('infer'):
            assert at('deit_small_patch16_224') == at('hvt_s_4') + 1
            assert at('deit_tiny_patch16_224') == at('hvt_ti_1') + 1
            gemm = [i for i, o in enumerate(order) if o[-1] == 'gemm']
            assert gemm == list(range(gemm[0], gemm[0] + len(gemm)))
            assert gemm[0] - at('hvt_s_1') <= 3  # right after its unfused and compiled cases
        for n in bm.TARGET_HVT:
            assert at(n, 'unfused') - at(n) <= 2
