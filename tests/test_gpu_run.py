"""benchmarks/gpu_run.py: its --quick rehearsal on the CPU, the goals it applies, and the authors' models it times.

timm's train.py, validate.py and benchmark.py are only in timm's repository (neither timm's wheel nor its sdist
holds them), so the rehearsal runs them when TIMM_SCRIPTS names a folder holding them; without it every other step
must still run, and the steps that need them must be reported as not run (exit status 3). No timing is asserted."""
import csv
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from benchmarks import gpu_run
from timm_hvt.flops import count_gmacs

ROOT = Path(__file__).resolve().parents[1]
BENCH_RUNS = ['hvt_s_4', 'deit_small_patch16_224', 'authors_hvt_s_4', 'hvt_s_4_fp32', 'hvt_s_4_compile']


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(900)
def test_quick_rehearsal_runs_every_step_and_writes_the_results(tmp_path):
    scripts, out = os.environ.get('TIMM_SCRIPTS', ''), tmp_path / 'out'
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_SCRIPTS'}
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_run', '--quick', '--out', str(out),
                           *(['--timm-scripts', scripts] if scripts else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=850)
    assert proc.returncode == (0 if scripts else 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    needs_scripts = {f'{kind}_{run}' for kind in ('train', 'validate') for run in gpu_run.RUNS}
    needs_scripts |= {f'bench_{name}' for name in BENCH_RUNS}
    steps = {s['step']: s['status'] for s in read_csv(out / 'steps.csv')}
    assert steps == {name: 'not run' if name in needs_scripts and not scripts else 'ok'
                     for name in needs_scripts | {'digits', 'sdpa'}}
    sdpa = json.loads((out / 'sdpa.json').read_text())
    assert {(r['dtype'], r['task']) for r in sdpa} == {(d, t) for d in ('float16', 'bfloat16')
                                                       for t in ('inference', 'train')}
    assert all(r['kernel'] != 'math' for r in sdpa), sdpa  # torch's CPU flash kernel
    env = json.loads((out / 'env.json').read_text())
    assert env['quick'] and env['device'] == 'cpu' and env['timm'] == timm.__version__
    goals = {g['goal']: g['met'] for g in read_csv(out / 'goals.csv')}
    assert list(goals) == [g[0] for g in gpu_run.GOALS]
    md = (out / 'results.md').read_text()
    if not scripts:
        assert all(met == 'not measured' for goal, met in goals.items() if not goal.startswith('SDPA'))
        assert all(f'`{name}`: not run' in md for name in needs_scripts)
        return
    version_file = Path(scripts) / 'timm_version.py'
    if version_file.is_file():
        assert env['timm_scripts_version'] == runpy.run_path(str(version_file))['__version__']
    for run in gpu_run.RUNS:  # timm's own outputs, kept as they are
        epochs = read_csv(out / 'train' / run / 'summary.csv')
        assert len(epochs) == 1 and float(epochs[0]['train_loss']) > 0, epochs
        assert (out / 'train' / run / 'args.yaml').is_file() and not list((out / 'train' / run).glob('*.pth.tar'))
        assert 0 <= json.loads((out / f'validate_{run}.json').read_text())['top1'] <= 100
    for name in BENCH_RUNS:  # the authors' models too, created by benchmark.py
        res = json.loads((out / f'benchmark_{name}.json').read_text())
        assert res['infer_samples_per_sec'] > 0 and res['train_samples_per_sec'] > 0, res
        assert f'| {name} | infer |' in md and f'| {name} | train |' in md
    assert {met for goal, met in goals.items() if 'CUDA memory' not in goal} <= {'yes', 'no'}, goals
    assert goals[next(g for g in goals if 'CUDA memory' in g)] == 'not measured'  # no CUDA counters on a CPU


def test_goals_and_flop_rate_from_the_scripts_outputs(tmp_path):
    """GOALS applied to results files as timm's scripts write them: ratios in the right direction, a non-finite
    loss failing, a missing run "not measured"; FLOP rate 2 x GMACs x images/s against the GPU's listed peak."""
    for run, losses, top1 in (('fp16', (2.3, 0.4), 90.), ('bf16', (2.3, float('nan')), 40.)):  # 2 epochs each
        (tmp_path / 'train' / run).mkdir(parents=True)
        epochs = [('epoch', 'train_loss', 'eval_top1')] + [(i, v, top1) for i, v in enumerate(losses)]
        with open(tmp_path / 'train' / run / 'summary.csv', 'w', newline='') as f:
            csv.writer(f).writerows(epochs)
        (tmp_path / f'validate_{run}.json').write_text(json.dumps({'model': 'hvt_s_4', 'top1': top1}))
    ips = {**{name: (100., 30.) for name in gpu_run.BENCH_MODELS}, 'hvt_s_4': (3000., 900.),
           'hvt_s_4_fp32': (1000., 300.), 'deit_small_patch16_224': (1000., 400.), 'authors_hvt_s_4': (3200., 800.)}
    for name, (infer, train) in ips.items():
        (tmp_path / f'benchmark_{name}.json').write_text(json.dumps({
            'model': name.replace('_fp32', ''), 'infer_samples_per_sec': infer, 'train_samples_per_sec': train}))
    gpu_run.write_csv(tmp_path / 'steps.csv', [dict(step='bench_hvt_s_4', status='ok', peak_mb=5000),
                                               dict(step='bench_deit_small_patch16_224', status='ok', peak_mb=6000)])
    (tmp_path / 'sdpa.json').write_text(json.dumps([{'kernel': 'flash_attention'}, {'kernel': 'math'}]))
    rows = {g['figures']: g for g in gpu_run.goals(tmp_path)}
    expected = {'top1 fp16': (90, 'yes'), 'top1 bf16': (40, 'no'), 'val_top1 bf16': (40, 'no'),
                'loss_last fp16 / loss_first fp16': (0.4 / 2.3, 'yes'),
                'loss_last bf16 / loss_first bf16': (None, 'no'),  # not finite
                'infer hvt_s_4 / infer hvt_s_4_fp32': (3, 'yes'), 'train hvt_s_4 / train hvt_s_4_fp32': (3, 'yes'),
                'infer hvt_s_4 / infer deit_small_patch16_224': (3, 'yes'),
                'infer hvt_s_4 / infer authors_hvt_s_4': (3000 / 3200, 'no'),
                'train hvt_s_4 / train authors_hvt_s_4': (900 / 800, 'yes'),
                'peak_mb bench_hvt_s_4 / peak_mb bench_deit_small_patch16_224': (5 / 6, 'yes'),
                'sdpa unfused': (1, 'no'), 'top1 bf16_compile': (None, 'not measured')}
    for figure, (value, met) in expected.items():
        assert rows[figure]['met'] == met, rows[figure]
        if value is not None:
            assert rows[figure]['measured'] == pytest.approx(value), rows[figure]
    gpu_run.summarize(tmp_path, gpu_run.SIZES['gpu'], dict(gpu='NVIDIA H200', torch='', timm='', date='', quick=False))
    tflops = 2 * count_gmacs(timm.create_model('hvt_s_4'), (3, 224, 224)) * 3000 / 1e3
    table = {tuple(c.strip() for c in line.strip('|').split('|')[:2]): [c.strip() for c in line.split('|')[4:-1]]
             for line in (tmp_path / 'results.md').read_text().splitlines()[-2 * len(ips):]}  # run, task: the rest
    assert set(table) == {(name, task) for name in ips for task in ('infer', 'train')}
    assert all(float(gmacs) > 0 for gmacs, _, _ in table.values())  # DeiT and PiT counted too
    assert table['hvt_s_4', 'infer'][1:] == [gpu_run.fmt(tflops), gpu_run.fmt(tflops / 989.4)]  # an H200's bf16 peak


def test_authors_models_are_timm_models_with_the_authors_arithmetic(one_thread):
    """`authors_*` take the creation arguments timm's scripts pass, give timm-hvt's logits for the same weights,
    and train: every weight gets a gradient."""
    theirs = timm.create_model('authors_hvt_ti_1', in_chans=3, drop_rate=0., scriptable=False, num_classes=10)
    ours = timm.create_model('hvt_ti_1', num_classes=10).eval()
    ours.load_state_dict(dict(zip(theirs.keys, [p.detach() for p in theirs.weights])))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), atol=1e-4, rtol=1e-4)
    theirs(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in theirs.parameters())
    assert timm.data.resolve_data_config({}, model=theirs)['input_size'] == (3, 224, 224)
