"""HVT on a GPU through timm's own train.py, validate.py and benchmark.py, held to GOALS (benchmarks/README.md).

    python -m benchmarks.gpu_run --timm-scripts DIR                     # on a CUDA GPU: benchmarks/results/gpu/
    python -m benchmarks.gpu_run --timm-scripts DIR --quick --out DIR   # every step at tiny sizes on the CPU

DIR: timm's train.py, validate.py and benchmark.py of the installed release, run unmodified (runpy) in this process,
one step after another; a failing step does not stop the others. Exit status: 0 every step succeeded, 1 a step
failed, 3 some steps could not run (no --timm-scripts).
"""
import argparse
import contextlib
import csv
import datetime
import gc
import json
import logging
import os
import platform
import runpy
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import timm
import torch

import timm_hvt
from benchmarks import authors_hvt  # noqa: F401  registers the authors_hvt_* models
from benchmarks.digits import export_digits
from timm_hvt.flops import count_gmacs

RUNS = {'fp16': ('float16', False), 'bf16': ('bfloat16', False),  # train.py runs: AMP dtype, --torchcompile
        'fp16_compile': ('float16', True), 'bf16_compile': ('bfloat16', True)}
# What counts as success, all in one place: (goal, figure or "figure / figure", comparison, target), the figures
# read off the results folder by figures(); a goal whose figures are missing is "not measured".
GOALS = [
    *[(f'train.py {r}: held-out top-1 % after the last epoch (chance: 10)', f'top1 {r}', '>=', 50) for r in RUNS],
    *[(f'train.py {r}: train loss, last epoch over first (a non-finite loss fails)',
       f'loss_last {r} / loss_first {r}', '<', 1) for r in RUNS],
    *[(f'validate.py {r}: top-1 % of the best checkpoint (chance: 10)', f'val_top1 {r}', '>=', 50) for r in RUNS],
    ('benchmark.py hvt_s_4: bf16 AMP over fp32, inference img/s', 'infer hvt_s_4 / infer hvt_s_4_fp32', '>=', 2),
    ('benchmark.py hvt_s_4: bf16 AMP over fp32, training img/s', 'train hvt_s_4 / train hvt_s_4_fp32', '>=', 2),
    ('benchmark.py: hvt_s_4 over DeiT-S, inference img/s', 'infer hvt_s_4 / infer deit_small_patch16_224', '>=', 2.5),
    ("benchmark.py: hvt_s_4, ours over the authors', inference", 'infer hvt_s_4 / infer authors_hvt_s_4', '>=', 1),
    ("benchmark.py: hvt_s_4, ours over the authors', training", 'train hvt_s_4 / train authors_hvt_s_4', '>=', 1),
    ('benchmark.py: hvt_s_4 over DeiT-S, peak CUDA memory of the run (inference and training)',
     'peak_mb bench_hvt_s_4 / peak_mb bench_deit_small_patch16_224', '<=', 1),
    ('SDPA under AMP: cases of HVT attention without a fused kernel', 'sdpa unfused', '==', 0),
]
COMPARE = {'>=': float.__ge__, '<=': float.__le__, '<': float.__lt__, '==': float.__eq__}
# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s: half the "with sparsity" figures of NVIDIA's datasheets;
# the first name found in torch.cuda.get_device_name() counts
DENSE_BF16_PEAK = {'H200 NVL': 835.5, 'H200': 989.4, 'H100 NVL': 835.5, 'H100 PCIe': 756.5, 'H100': 989.4,
                   'A100': 312.0}
BENCH_MODELS = ['hvt_ti_1', 'hvt_s_1', 'hvt_s_4', 'deit_tiny_patch16_224', 'deit_small_patch16_224', 'pit_ti_224',
                'pit_s_224', 'authors_hvt_ti_1', 'authors_hvt_s_1', 'authors_hvt_s_4']
SIZES = {  # 1437 training and 360 held-out digits: batch 128 makes 11 updates an epoch, 120 three equal eval batches
    'gpu': dict(device='cuda', img=224, limit=None, epochs=6, batch=128, val_batch=120, workers=8, lr='1e-3',
                model=['hvt_s_4'], backend='inductor', bench_models=BENCH_MODELS, bench_img=224, bench=['-b', '256']),
    # the rehearsal: a 2-block HVT of width 64 on 64 digits a split at 32x32; benchmark.py at 96x96, batch 2
    'quick': dict(device='cpu', img=32, limit=64, epochs=1, batch=32, val_batch=32, workers=1, lr='3e-3',
                  model='hvt_ti_1 --model-kwargs embed_dim=64 num_heads=2 depth=2 patch_size=4 img_size=32'.split(),
                  backend='eager', bench_models=['hvt_s_4', 'deit_small_patch16_224', 'authors_hvt_s_4'], bench_img=96,
                  bench='-b 2 --num-warm-iter 1 --num-bench-iter 5 --img-size 96 --model-kwargs img_size=96'.split()),
}


def timm_script(path: Path, *argv) -> None:
    sys.argv = [str(path), *map(str, argv)]
    runpy.run_path(str(path), run_name='__main__')


def benchmark(path: Path, results: Path, *argv) -> None:
    """timm's benchmark.py; it reports a failed run in its results file, which fails the step."""
    timm_script(path, *argv, '--no-retry', '--results-file', results, '--results-format', 'json')
    if 'error' in read_json(results):
        raise RuntimeError(f"benchmark.py: {read_json(results)['error']}")


def sdpa(out: Path, device: str, img: int, batch: int) -> None:
    """The SDPA kernels hvt_s_4's attention dispatches to under fp16 and bf16 autocast, inference and training."""
    model, rows = timm.create_model('hvt_s_4', img_size=img).to(device), []
    x = torch.randn(batch, 3, img, img, device=device)
    for dtype in ('float16', 'bfloat16'):
        for task in ('inference', 'train'):
            model.train(task == 'train')
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                with torch.autocast(x.device.type, getattr(torch, dtype)), torch.set_grad_enabled(model.training):
                    y = model(x).float()
                if model.training:
                    y.logsumexp(-1).mean().backward()
            ops = sorted({e.key for e in prof.key_averages() if e.key.startswith('aten::') and 'attention' in e.key})
            fused = [k for k in ('flash_attention', 'efficient_attention', 'cudnn_attention') if k in ' '.join(ops)]
            rows.append(dict(dtype=dtype, task=task, kernel=fused[0] if fused else 'math', aten_ops=ops))
    (out / 'sdpa.json').write_text(json.dumps(rows, indent=1) + '\n')


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else {}


def read_csv(path: Path) -> list:
    if not path.is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list) -> None:
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def figures(out: Path) -> dict:
    """The figures the goals are checked on, read off what timm's scripts and the steps left in `out`."""
    fig = {f'peak_mb {s["step"]}': s['peak_mb'] for s in read_csv(out / 'steps.csv') if s['status'] == 'ok'}
    for run in RUNS:
        epochs = read_csv(out / 'train' / run / 'summary.csv') or [{}]
        fig.update({f'top1 {run}': epochs[-1].get('eval_top1'), f'loss_first {run}': epochs[0].get('train_loss'),
                    f'loss_last {run}': epochs[-1].get('train_loss'),
                    f'val_top1 {run}': read_json(out / f'validate_{run}.json').get('top1')})
    for f in out.glob('benchmark_*.json'):  # benchmark_<run>.json
        fig.update({f'{m} {f.stem[10:]}': read_json(f).get(f'{m}_samples_per_sec') for m in ('infer', 'train')})
    if (out / 'sdpa.json').is_file():
        fig['sdpa unfused'] = sum(r['kernel'] == 'math' for r in read_json(out / 'sdpa.json'))
    return {k: float(v) for k, v in fig.items() if v not in (None, '')}


def goals(out: Path) -> list:
    """GOALS applied to figures(out): one row per goal, met yes / no / not measured."""
    fig, rows = figures(out), []
    for goal, figure, op, target in GOALS:
        values = [fig.get(k) for k in figure.split(' / ')]
        value = None if None in values else values[0] / values[1] if len(values) == 2 else values[0]
        met = 'not measured' if value is None else 'yes' if COMPARE[op](value, float(target)) else 'no'
        rows.append(dict(goal=goal, measured=value, target=f'{op} {target}', met=met, figures=figure))
    return rows


def fmt(v) -> str:
    return '–' if v is None or v != v else f'{v:.3g}'


def summarize(out: Path, cfg: dict, env: dict) -> None:
    """goals.csv, and results.md: the goals, the steps that did not succeed, each benchmark.py run's FLOP rate."""
    rows = goals(out)
    write_csv(out / 'goals.csv', rows)
    peak = next((p for name, p in DENSE_BF16_PEAK.items() if name in env['gpu']), None)
    text = [f"# HVT through timm's scripts: {env['gpu']}, torch {env['torch']}, timm {env['timm']}, {env['date']}\n",
            'A `--quick` rehearsal on the CPU at tiny sizes: it measures nothing.\n' if env['quick'] else '',
            '| goal | measured | target | met |', '|---|---|---|---|']
    text += [f"| {g['goal']} | {fmt(g['measured'])} | {g['target']} | {g['met']} |" for g in rows]
    text += [f"\nStep `{s['step']}`: {s['status']}. {s['detail']}" for s in read_csv(out / 'steps.csv')
             if s['status'] != 'ok']
    text += ['', f"FLOP rate: 2 x GMACs (timm_hvt.flops.count_gmacs) x images/s of benchmark.py (x3 for a training "
             f"step); peak: {peak or 'unknown'} TFLOP/s dense bf16.\n", '| run | task | img/s | GMACs | TFLOP/s | '
             'of peak |', '|---|---|---|---|---|---|']
    for f, img in ((f, cfg['bench_img']) for f in sorted(out.glob('benchmark_*.json'))):
        res = read_json(f)
        with torch.device('meta'):  # shapes only; no grads: FlopCounterMode's module hooks fail on PiT's
            gmacs = count_gmacs(timm.create_model(res['model'], img_size=img).requires_grad_(False), (3, img, img))
        for mode, times in (('infer', 1), ('train', 3)):
            ips = res.get(f'{mode}_samples_per_sec')
            tflops = ips and 2 * gmacs * ips * times / 1e3
            text.append(f"| {f.stem[10:]} | {mode} | {fmt(ips)} | {gmacs:.3g} | {fmt(tflops)} | "
                        f"{fmt(peak and tflops and 'fp32' not in f.stem and tflops / peak)} |")
    (out / 'results.md').write_text('\n'.join(text) + '\n')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--timm-scripts', default=os.environ.get('TIMM_SCRIPTS', ''),
                   help="the folder with timm's train.py, validate.py and benchmark.py (default: $TIMM_SCRIPTS)")
    p.add_argument('--quick', action='store_true', help='every step at tiny sizes on the CPU: measures nothing')
    p.add_argument('--out', default='', help='a new or empty folder (default: benchmarks/results/gpu; --quick: new)')
    a = p.parse_args(argv)
    cfg = SIZES['quick' if a.quick else 'gpu']
    dev, scripts = cfg['device'], a.timm_scripts and Path(a.timm_scripts).resolve()
    if scripts and not all((scripts / f).is_file() for f in ('train.py', 'validate.py', 'benchmark.py')):
        p.error(f"{scripts} lacks timm's train.py, validate.py or benchmark.py")
    if not a.quick and not (scripts and torch.cuda.is_available()):
        p.error('the GPU run needs --timm-scripts DIR and a CUDA device (--quick rehearses it on the CPU)')
    out = Path(a.out or (tempfile.mkdtemp(prefix='hvt-gpu-quick-') if a.quick else 'benchmarks/results/gpu'))
    if out.is_dir() and any(out.iterdir()):
        p.error(f'{out} is not empty')
    (out / 'logs').mkdir(parents=True, exist_ok=True)
    version = scripts and (scripts / 'timm_version.py').is_file() and runpy.run_path(str(scripts / 'timm_version.py'))
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), quick=a.quick,
               command=' '.join(['python -m benchmarks.gpu_run', *(sys.argv[1:] if argv is None else argv)]),
               device=dev, gpu=torch.cuda.get_device_name() if dev == 'cuda' else 'none (CPU)',
               torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               timm=timm.__version__, timm_hvt=timm_hvt.__version__, python=platform.python_version(),
               timm_scripts=str(scripts or ''), timm_scripts_version=version['__version__'] if version else None)
    (out / 'env.json').write_text(json.dumps(env, indent=1) + '\n')
    steps, work = [], Path(tempfile.mkdtemp(prefix='hvt-gpu-run-'))

    def step(name, fn, *args):
        row = dict(step=name, status='not run', seconds=0, peak_mb='', detail='needs --timm-scripts')
        if scripts or fn not in (timm_script, benchmark):
            handlers, sys_argv, t0 = logging.root.handlers[:], sys.argv, time.perf_counter()
            torch.compiler.reset()
            gc.collect()
            if dev == 'cuda':
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            with open(out / 'logs' / f'{name}.log', 'w') as log, contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                row.update(status='ok', detail='')
                try:
                    fn(*args)
                except (Exception, SystemExit) as e:  # a script's sys.exit too
                    if not isinstance(e, SystemExit) or e.code not in (0, None):
                        traceback.print_exc()
                        row.update(status='failed', detail=f'{type(e).__name__}: {e}'.splitlines()[0][:200])
                finally:  # timm's scripts add a console handler each run
                    logging.root.handlers[:], sys.argv = handlers, sys_argv
            row.update(seconds=round(time.perf_counter() - t0, 1),
                       peak_mb=round(torch.cuda.max_memory_allocated() / 2 ** 20) if dev == 'cuda' else '')
        steps.append(row)
        write_csv(out / 'steps.csv', steps)
        print(f"{name}: {row['status']} ({row['seconds']} s) {row['detail']}", flush=True)

    data, script = work / 'digits', (lambda f: scripts and scripts / f)
    step('digits', export_digits, str(data), cfg['img'], 0.2, 0, cfg['limit'])
    common = ['--data-dir', data, '--model', *cfg['model'], '--num-classes', 10, '--img-size', cfg['img'],
              '--crop-pct', 1.0, '--device', dev, '--workers', cfg['workers'], '--amp']
    for run, (dtype, compiled) in RUNS.items():
        step(f'train_{run}', timm_script, script('train.py'), *common, '--amp-dtype', dtype,
             *(['--torchcompile', cfg['backend']] if compiled else []), '--epochs', cfg['epochs'], '-b', cfg['batch'],
             '--validation-batch-size', cfg['val_batch'], '--opt', 'adamw', '--lr', cfg['lr'], '--weight-decay', 0.05,
             '--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', 1, '--warmup-lr', 1e-5, '--scale', 0.6, 1,
             '--hflip', 0, '--color-jitter', 0, '--smoothing', 0.1, '--seed', 0, '--checkpoint-hist', 1,
             '--output', out / 'train', '--experiment', run)
        step(f'validate_{run}', timm_script, script('validate.py'), *common, '--amp-dtype', dtype, '--split', 'val',
             '-b', cfg['val_batch'], '--checkpoint', out / 'train' / run / 'model_best.pth.tar',
             '--results-file', out / f'validate_{run}.json', '--results-format', 'json')
    amp = ['--amp', '--amp-dtype', 'bfloat16']
    for name, model, extra in [(m, m, amp) for m in cfg['bench_models']] + [
            ('hvt_s_4_fp32', 'hvt_s_4', []), ('hvt_s_4_compile', 'hvt_s_4', [*amp, '--torchcompile', cfg['backend']])]:
        step(f'bench_{name}', benchmark, script('benchmark.py'), out / f'benchmark_{name}.json', '--model', model,
             '--device', dev, *cfg['bench'], *extra)
    step('sdpa', sdpa, out, dev, cfg['bench_img'], int(cfg['bench'][1]))
    shutil.rmtree(work, ignore_errors=True)
    for f in (out / 'train').glob('*/*.pth.tar'):  # the checkpoints; train.py's summary.csv and args.yaml stay
        f.unlink()
    summarize(out, cfg, env)
    print((out / 'results.md').read_text() + f'\nresults: {out}')
    status = {s['status'] for s in steps}
    return 1 if 'failed' in status else 3 if 'not run' in status else 0


if __name__ == '__main__':
    sys.exit(main())
