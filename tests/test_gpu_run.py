"""benchmarks/gpu_run.sh: the prepared GPU run, checked on the CPU with --quick (tiny sizes), and its parts.

timm's train.py, validate.py and benchmark.py are not in the timm package, so they are only here when TIMM_SCRIPTS
names a folder holding them (of the installed timm's release; benchmarks/README.md says how to get them). Without
it, the quick run must still do every step that does not need them and name, step by step, what it could not run
and why, with its own exit status (3): that is checked always. With it, every step must run and succeed, and the
figures of each step must land in results.csv and goals.csv: that is checked when TIMM_SCRIPTS is set. No timing is
asserted: --quick measures nothing.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu_run.sh'
from benchmarks import gpu_run  # noqa: E402

SCRIPT_STEPS = ['train_fp16', 'train_bf16', 'validate_fp16', 'validate_bf16', 'bench', 'train_fp16_compile',
                'train_bf16_compile', 'validate_fp16_compile', 'validate_bf16_compile']
OTHER_STEPS = ['env', 'digits', 'sdpa', 'flops']
RUNS = ['fp16', 'bf16', 'fp16_compile', 'bf16_compile']


def run_sh(*args, scripts=None, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ('TIMM_SCRIPTS', 'OUT')}
    env['PYTHON'] = sys.executable
    if scripts:
        env['TIMM_SCRIPTS'] = scripts
    return subprocess.run(['bash', str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def fail_text(proc):
    return f'exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}'


@pytest.fixture(scope='module')
def no_scripts(tmp_path_factory):
    out, work = tmp_path_factory.mktemp('gpu_quick'), tmp_path_factory.mktemp('gpu_quick_work')
    proc = run_sh('--quick', '--out', str(out), '--work', str(work / 'w'))
    return proc, out


@pytest.mark.timeout(900)  # the module fixture's quick run counts here: 1-2 minutes on 2 shared cores
def test_quick_without_timm_scripts_runs_the_rest_and_names_what_it_could_not(no_scripts):
    proc, out = no_scripts
    assert proc.returncode == 3, fail_text(proc)  # not 0: the run is incomplete, and says so
    steps = {s['step']: s for s in read_csv(out / 'steps.csv')}
    assert set(steps) == set(SCRIPT_STEPS + OTHER_STEPS)
    for name in OTHER_STEPS:
        assert steps[name]['status'] == 'ok', steps[name]
    for name in SCRIPT_STEPS:
        assert steps[name]['status'] == 'not run' and 'TIMM_SCRIPTS' in steps[name]['detail'], steps[name]
    md = (out / 'results.md').read_text()
    assert '--quick' in md and '## Not run or failed' in md
    assert all(f'`{name}`: not run' in md for name in SCRIPT_STEPS)

    rows = read_csv(out / 'results.csv')
    assert not [r for r in rows if r['group'] in ('train', 'validate', 'benchmark')]  # nothing pretends to have run
    sdpa = [r for r in rows if r['group'] == 'sdpa']
    assert {(r['dtype'], r['task']) for r in sdpa} == {(d, t) for d in ('float16', 'bfloat16')
                                                       for t in ('inference', 'train')}
    assert all(r['backend'] not in ('math', 'none', 'error') and not r['error'] for r in sdpa), sdpa
    flops = {r['model']: r for r in rows if r['group'] == 'flops'}
    assert {'hvt_s_0', 'hvt_s_4'} <= set(flops) and any(m.startswith('matmul') for m in flops)
    for m in ('hvt_s_0', 'hvt_s_4'):
        assert not flops[m]['error'] and float(flops[m]['tflops']) > 0 and float(flops[m]['gmacs']) > 0
    assert float(flops['hvt_s_4']['gmacs']) < float(flops['hvt_s_0']['gmacs'])  # pooling saves work at any size
    assert flops['hvt_s_0']['frac_peak'] == ''  # no dense bf16 peak is claimed for a CPU

    goals = {g['goal']: g for g in read_csv(out / 'goals.csv')}
    for name, g in goals.items():
        if name.startswith(('benchmark.py', 'train.py')):
            assert g['met'] == 'not measured', g
    assert goals['SDPA kernel of HVT attention under AMP']['met'] == 'yes'

    env = json.loads((out / 'env.json').read_text())
    assert env['quick'] and env['device'] == 'cpu' and env['timm'] == timm.__version__
    assert env['timm_scripts'] is None and env['timm_scripts_version'] is None


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS'),
                    reason="TIMM_SCRIPTS not set: timm's train.py, validate.py and benchmark.py are not in the timm "
                           'package (benchmarks/README.md: "On a GPU"); the run without them is checked above')
@pytest.mark.timeout(1800)
def test_quick_with_timm_scripts_runs_every_step(tmp_path):
    out = tmp_path / 'out'
    proc = run_sh('--quick', '--out', str(out), '--work', str(tmp_path / 'work'), scripts=os.environ['TIMM_SCRIPTS'],
                  timeout=1700)
    assert proc.returncode == 0, fail_text(proc)
    steps = read_csv(out / 'steps.csv')
    assert [s['step'] for s in steps if s['status'] == 'ok'] == [
        'env', 'digits', 'train_fp16', 'train_bf16', 'validate_fp16', 'validate_bf16', 'sdpa', 'bench', 'flops',
        'train_fp16_compile', 'train_bf16_compile', 'validate_fp16_compile', 'validate_bf16_compile'], steps
    env = json.loads((out / 'env.json').read_text())
    assert env['timm_scripts_version'] == timm.__version__

    rows = read_csv(out / 'results.csv')
    train = {r['run']: r for r in rows if r['group'] == 'train'}
    valid = {r['run']: r for r in rows if r['group'] == 'validate'}
    assert set(train) == set(valid) == set(RUNS)
    for run, t in train.items():
        assert not t['error'] and t['loss_finite'] == 'True', t
        assert int(t['epochs']) == 2 and int(t['updates']) == 2 * (160 // 32), t  # read off train.py's log
        assert float(t['img_per_s']) > 0 and t['top1'] != ''
        # validate.py on the saved checkpoint sees what train.py's own evaluation saw (160 held-out images)
        assert abs(float(valid[run]['top1']) - float(t['top1_best'])) <= 100 / 160 + 1e-6, (t, valid[run])
    assert {(r['dtype'], r['compile']) for r in train.values()} == {
        (d, c) for d in ('float16', 'bfloat16') for c in ('True', 'False')}

    bench = [r for r in rows if r['group'] == 'benchmark']
    assert {(r['model'], r['impl'], r['task']) for r in bench} == {
        (m, i, t) for m, i in (('hvt_ti_1', 'ours'), ('hvt_s_4', 'ours'), ('deit_small_patch16_224', 'ours'),
                               ('hvt_s_4', 'authors')) for t in ('inference', 'train')}
    assert all(not r['error'] and float(r['img_per_s']) > 0 for r in bench), bench

    goals = {g['goal']: g for g in read_csv(out / 'goals.csv')}
    for name in ('hvt_s_4 / deit_small, inference images/s', 'hvt_s_4 ours / authors, inference images/s',
                 'hvt_s_4 ours / authors, training images/s'):
        assert goals[f'benchmark.py {name}']['met'] in ('yes', 'no'), goals
    for run in RUNS:
        assert goals[f'train.py {run}: losses finite and falling']['met'] in ('yes', 'no')
    # on the CPU train.py runs float16 autocast without a GradScaler; the goal says so instead of passing
    assert goals['train.py fp16: fp16 steps skipped by the GradScaler']['met'] == 'not measured'


def test_full_run_refuses_to_start_without_a_gpu_or_timm_scripts(tmp_path):
    proc = run_sh('--out', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'), timeout=300)
    assert proc.returncode == 2, fail_text(proc)
    if torch.cuda.is_available():
        assert 'TIMM_SCRIPTS' in proc.stderr
    else:
        assert 'CUDA' in proc.stderr and '--quick' in proc.stderr
    assert not (tmp_path / 'out' / 'steps.csv').exists()


def fake_scripts(folder, version=None, names=gpu_run.SCRIPTS):
    folder.mkdir()
    for name in names:
        (folder / name).write_text('raise SystemExit("not to be run")\n')
    if version:
        (folder / 'timm_version.py').write_text(f"__version__ = '{version}'\n")
    return folder


def test_scripts_of_another_timm_release_are_refused(tmp_path):
    scripts = fake_scripts(tmp_path / 'scripts', version='0.0.1')
    proc = run_sh('--quick', '--out', str(tmp_path / 'out'), '--work', str(tmp_path / 'work'),
                  scripts=str(scripts), timeout=300)
    assert proc.returncode == 2, fail_text(proc)
    assert '0.0.1' in proc.stderr and timm.__version__ in proc.stderr
    assert not (tmp_path / 'out' / 'steps.csv').exists()  # refused before any step


def test_scripts_folder_must_hold_all_three_scripts(tmp_path):
    scripts = fake_scripts(tmp_path / 'scripts', version=timm.__version__, names=['train.py'])
    proc = run_sh('--quick', '--timm-scripts', str(scripts), '--out', str(tmp_path / 'out'), timeout=300)
    assert proc.returncode == 2, fail_text(proc)
    assert 'validate.py' in proc.stderr and 'benchmark.py' in proc.stderr and 'train.py' not in proc.stderr.split(
        'lacks')[1].split(':')[0]


def test_scripts_version_is_read_from_the_release_file(tmp_path):
    scripts = fake_scripts(tmp_path / 'scripts', version=timm.__version__)
    assert gpu_run.scripts_version(scripts)[0] == timm.__version__
    assert gpu_run.scripts_version(fake_scripts(tmp_path / 'other'))[0] is None  # unknown: reported, not guessed


def test_steps_left_out_or_out_of_time_are_named_and_the_results_still_written(tmp_path):
    out = tmp_path / 'out'
    proc = run_sh('--quick', '--steps', 'flops', '--budget', '0', '--out', str(out), '--work', str(tmp_path / 'w'),
                  timeout=300)
    assert proc.returncode == 3, fail_text(proc)
    steps = {s['step']: s for s in read_csv(out / 'steps.csv')}
    assert steps['flops']['status'] == 'not run' and 'budget' in steps['flops']['detail']
    assert steps.pop('env')['status'] == 'ok'  # env.json is written whatever the budget
    others = [s for name, s in steps.items() if name != 'flops']
    assert others and all(s['status'] == 'not run' and '--steps' in s['detail'] for s in others), others
    assert (out / 'results.md').is_file() and (out / 'goals.csv').is_file() and (out / 'env.json').is_file()


@pytest.mark.parametrize('args', [['--steps', 'train,nonsense'], ['--budget', 'ten'], ['--frobnicate']])
def test_bad_arguments_are_refused(tmp_path, args):
    proc = run_sh('--quick', '--out', str(tmp_path / 'out'), *args, timeout=120)
    assert proc.returncode == 2, fail_text(proc)
    assert not (tmp_path / 'out' / 'steps.csv').exists()


def test_fp16_skipped_steps_are_read_off_the_gradscaler_state(tmp_path):
    """A real GradScaler skips the steps whose gradients overflow (here updates 1, 2 and 5 of 8); the count and the
    last one come back from the state train.py's checkpoint keeps, next to an argparse.Namespace as train.py saves."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler('cpu')
    for i in range(8):
        loss = p.sum() * (float('inf') if i in (0, 1, 4) else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    torch.save({'amp_scaler': scaler.state_dict(), 'args': argparse.Namespace(model='hvt_s_4', lr=1e-3)},
               tmp_path / 'last.pth.tar')
    skips, last, _ = gpu_run._scaler_skips(tmp_path / 'last.pth.tar', 8)
    assert (skips, last) == (3, 5)
    torch.save({'args': argparse.Namespace(model='hvt_s_4')}, tmp_path / 'bf16.pth.tar')
    assert gpu_run._scaler_skips(tmp_path / 'bf16.pth.tar', 8)[:2] == (None, None)  # no scaler: nothing claimed


def test_summary_goals_are_ours_over_theirs_from_benchmark_rows(tmp_path):
    """Goals from benchmark.py's results: ratios of the medians over the rounds, in the right direction."""
    work, res = tmp_path / 'work', tmp_path / 'res'
    work.mkdir(), res.mkdir()
    ips = {('hvt_s_4', 'inference'): [3000, 3300, 3100], ('deit_small_patch16_224', 'inference'): [1000, 1100, 1000],
           ('authors_hvt_s_4', 'inference'): [3200, 3200, 3200], ('hvt_s_4', 'train'): [900, 1000, 950],
           ('authors_hvt_s_4', 'train'): [800, 800, 900], ('deit_small_patch16_224', 'train'): [300, 300, 300]}
    peak = {'hvt_s_4': 5000., 'deit_small_patch16_224': 6000., 'authors_hvt_s_4': 7000.}
    with open(work / 'bench.jsonl', 'w') as f:
        for (model, mode), values in ips.items():
            pre = 'infer' if mode == 'inference' else 'train'
            for r, v in enumerate(values):
                f.write(json.dumps(dict(round=r, model=model, mode=mode, error='', peak_mb=peak[model], result={
                    f'{pre}_samples_per_sec': v, f'{pre}_step_time': 256e3 / v, f'{pre}_batch_size': 256})) + '\n')
    gpu_run.main(['summarize', str(work), str(res), '--runs', '{}'])
    goals = {g['goal']: g for g in read_csv(res / 'goals.csv')}
    ratio = goals['benchmark.py hvt_s_4 / deit_small, inference images/s']
    assert float(ratio['measured']) == pytest.approx(3100 / 1000) and ratio['met'] == 'yes'
    ratio = goals['benchmark.py hvt_s_4 ours / authors, inference images/s']
    assert float(ratio['measured']) == pytest.approx(3100 / 3200) and ratio['met'] == 'no'
    ratio = goals['benchmark.py hvt_s_4 ours / authors, training images/s']
    assert float(ratio['measured']) == pytest.approx(950 / 800) and ratio['met'] == 'yes'
    mem = goals['benchmark.py hvt_s_4 / deit_small, peak training memory']
    assert float(mem['measured']) == pytest.approx(5000 / 6000) and mem['met'] == 'yes'
    rows = [r for r in read_csv(res / 'results.csv') if r['group'] == 'benchmark']
    authors = next(r for r in rows if r['model'] == 'hvt_s_4' and r['impl'] == 'authors' and r['task'] == 'train')
    assert float(authors['img_per_s']) == 800 and float(authors['peak_mb']) == 7000


def test_sdpa_kernel_names():
    assert gpu_run.sdpa_backend({'aten::scaled_dot_product_attention', 'aten::_scaled_dot_product_flash_attention',
                                 'aten::_scaled_dot_product_flash_attention_backward'}) == 'flash'
    assert gpu_run.sdpa_backend({'aten::_scaled_dot_product_efficient_attention'}) == 'memory-efficient'
    assert gpu_run.sdpa_backend({'aten::_scaled_dot_product_cudnn_attention'}) == 'cuDNN'
    assert gpu_run.sdpa_backend({'aten::scaled_dot_product_attention'}) == 'math'  # dispatched, no fused kernel
    assert gpu_run.sdpa_backend(set()) == 'none'


def test_authors_models_run_the_authors_arithmetic_in_timm(one_thread):
    """`authors_*` are timm models (benchmark.py's creation arguments accepted) whose logits are those of timm-hvt's
    model with the same weights, and which train: every weight gets a gradient."""
    from benchmarks import authors_hvt  # noqa: F401
    import timm_hvt  # noqa: F401
    theirs = timm.create_model('authors_hvt_ti_1', in_chans=3, drop_rate=0., scriptable=False, num_classes=10)
    ours = timm.create_model('hvt_ti_1', num_classes=10).eval()
    ours.load_state_dict(dict(zip(theirs.keys, [p.detach() for p in theirs.weights])))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), atol=1e-4, rtol=1e-4)
    theirs(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in theirs.parameters())
    assert timm.data.resolve_data_config({}, model=theirs)['input_size'] == (3, 224, 224)
