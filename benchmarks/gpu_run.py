#!/usr/bin/env python3
"""The Python half of benchmarks/gpu_run.sh: one subcommand per step, and the summary of them all.

    gpu_run.py check-scripts DIR          are timm's train.py / validate.py / benchmark.py there, of the installed timm?
    gpu_run.py env OUT.json ...           GPU, driver, CUDA, torch, timm, timm-hvt, the scripts' version
    gpu_run.py digits ROOT ...            scikit-learn's digits as an ImageFolder (benchmarks/digits.py)
    gpu_run.py script SCRIPT ARGS...      one of timm's scripts, unchanged, the hvt_* and authors_* models registered
    gpu_run.py bench OUT.jsonl ...        timm's benchmark.py once per model and mode, in rounds, with peak memory
    gpu_run.py sdpa OUT.json ...          which SDPA kernel HVT's attention runs under AMP
    gpu_run.py flops OUT.json ...         achieved FLOP rate against the GPU's dense bf16 peak
    gpu_run.py summarize WORK RESULTS ... results.csv, goals.csv, results.md from what the steps left in WORK

timm's scripts run through `script` / `bench`: this process imports timm_hvt (the models) and
benchmarks/authors_hvt.py (the authors' computation as `authors_*` models), then runs the script file with
runpy under the script's own command line. The scripts are not modified, wrapped or patched; `bench` only reads
torch's CUDA memory counters between two runs.
"""
import argparse
import csv
import datetime
import gc
import json
import logging
import math
import os
import platform
import re
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ('train.py', 'validate.py', 'benchmark.py')

# dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets; the datasheets print the sparse figure,
# twice these. Matched against torch.cuda.get_device_name(), most specific name first.
DENSE_BF16_PEAK = [
    ('H200 NVL', 835.5e12, 'NVIDIA H200 NVL datasheet: BFLOAT16 Tensor Core 1,671 TFLOPS with sparsity, 835.5 dense'),
    ('H200', 989.4e12, 'NVIDIA H200 (SXM) datasheet: BFLOAT16 Tensor Core 1,979 TFLOPS with sparsity, 989.4 dense'),
    ('H100 NVL', 835.5e12, 'NVIDIA H100 NVL datasheet: BFLOAT16 Tensor Core 1,671 TFLOPS with sparsity, 835.5 dense'),
    ('H100 PCIe', 756.5e12, 'NVIDIA H100 PCIe datasheet: BFLOAT16 Tensor Core 1,513 TFLOPS with sparsity, 756.5 dense'),
    ('H100', 989.4e12, 'NVIDIA H100 SXM datasheet: BFLOAT16 Tensor Core 1,979 TFLOPS with sparsity, 989.4 dense'),
    ('A100', 312e12, 'NVIDIA A100 datasheet: BFLOAT16 Tensor Core 312 TFLOPS dense (624 with sparsity)'),
]
CHANCE_TOP1 = 10.0  # digits: 10 classes
TOP1_GOAL = 50.0    # "well above chance": five times chance
FIRST_FEW_UPDATES = 10  # fp16: the scaler may skip steps while it finds its scale, within the first updates only


def _register_models():
    import timm_hvt  # noqa: F401  the hvt_* models (also when the start-up hook is off or not installed)
    from benchmarks import authors_hvt  # noqa: F401  the authors_* models


def _fail(msg, code=2):
    print(f'gpu_run: {msg}', file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------- timm's scripts
def scripts_version(folder: Path):
    """The timm version timm's scripts in `folder` belong to, and where it was read; (None, why) if unknown."""
    for f in (folder / 'timm_version.py', folder / 'timm' / 'version.py'):
        if f.is_file():
            m = re.search(r'''__version__\s*=\s*['"]([^'"]+)['"]''', f.read_text())
            if m:
                return m.group(1), str(f)
    try:
        tag = subprocess.run(['git', '-C', str(folder), 'describe', '--tags', '--exact-match'], capture_output=True,
                             text=True, timeout=30)
        if tag.returncode == 0 and tag.stdout.strip():
            return tag.stdout.strip().lstrip('v'), f'git tag {tag.stdout.strip()}'
    except (OSError, subprocess.SubprocessError):
        pass
    return None, f'{folder} has no timm_version.py, no timm/version.py and is no checkout at a release tag'


def cmd_check_scripts(a):
    import timm
    folder = Path(a.folder)
    missing = [s for s in SCRIPTS if not (folder / s).is_file()]
    if missing:
        _fail(f'{folder} lacks {", ".join(missing)}: give the folder that holds timm\'s train.py, validate.py and '
              f'benchmark.py (from github.com/huggingface/pytorch-image-models; they are not in the timm package)')
    version, source = scripts_version(folder)
    if version is None:
        print(f'gpu_run: WARNING: cannot tell which timm release the scripts in {folder} belong to ({source}); '
              f'installed timm is {timm.__version__}. Put the release\'s timm/version.py there as timm_version.py '
              f'to have this checked.', file=sys.stderr)
        print('unverified')
        return
    if version != timm.__version__:
        _fail(f'timm\'s scripts in {folder} are from timm {version} ({source}), the installed timm is '
              f'{timm.__version__} ({timm.__file__}): use the scripts of the installed release, or install timm=='
              f'{version}')
    print(version)


def cmd_script(a):
    """Run one of timm's scripts under its own command line, the hvt_* and authors_* models registered."""
    _register_models()
    sys.argv = [a.script, *a.args]
    runpy.run_path(a.script, run_name='__main__')


def cmd_bench(a):
    """timm's benchmark.py, once per (model, mode), in rounds (the first model rotating), peak memory per run."""
    import torch
    _register_models()
    script = str(Path(a.scripts) / 'benchmark.py')
    models = [m for m in a.models.split(',') if m]
    cases = [(m, mode) for m in models for mode in ('inference', 'train')]
    cuda = a.device.startswith('cuda')
    out = Path(a.out)
    for r in range(a.rounds):
        shift = (r * 2) % len(cases)
        for model, mode in cases[shift:] + cases[:shift]:
            res_file = out.with_suffix(f'.{model}.{mode}.json')
            res_file.unlink(missing_ok=True)
            sys.argv = [script, '--model', model, '--bench', mode, '-b', str(a.batch), '--device', a.device,
                        '--num-warm-iter', str(a.warm), '--num-bench-iter', str(a.iters), '--no-retry',
                        '--results-file', str(res_file), '--results-format', 'json',
                        *(['--amp', '--amp-dtype', a.amp_dtype] if a.amp_dtype else []),
                        *(['--img-size', str(a.img_size), '--model-kwargs', f'img_size={a.img_size}']
                          if a.img_size != 224 else [])]
            logging.root.handlers.clear()  # each run of the script adds its console handler again
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            row = dict(round=r, model=model, mode=mode, argv=sys.argv[1:], error='')
            t0 = time.perf_counter()
            try:
                runpy.run_path(script, run_name='__main__')
                if cuda:
                    torch.cuda.synchronize()
                res = json.loads(res_file.read_text())
                row.update(result=res, error=res.get('error', ''))
            except BaseException as e:  # noqa: B036  a failed run is a row; SystemExit from argparse too
                if isinstance(e, KeyboardInterrupt):
                    raise
                row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
            row['wall_s'] = round(time.perf_counter() - t0, 2)
            row['peak_mb'] = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
            with out.open('a') as f:
                f.write(json.dumps(row) + '\n')
            print(f'bench round {r} {model} {mode}: {row.get("result", {})} peak_mb={row["peak_mb"]} '
                  f'{row["error"]}', flush=True)


# ---------------------------------------------------------------------------------------------- our own checks
def _device(name):
    import torch
    return torch.device(name)


def _sync(dev):
    import torch
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def sdpa_backend(ops):
    """The SDPA implementation that a set of profiled aten op names shows."""
    names = ' '.join(ops)
    for key, backend in (('cudnn_attention', 'cuDNN'), ('efficient_attention', 'memory-efficient'),
                         ('flash_attention_for_cpu', 'flash (CPU kernel)'), ('flash_attention', 'flash'),
                         ('fused_attention_overrideable', 'fused (backend-defined)')):
        if key in names:
            return backend
    return 'math' if 'scaled_dot_product_attention' in names else 'none'


def cmd_sdpa(a):
    """Profile one forward (inference) and one training step of a model under autocast; name the SDPA kernels."""
    import timm
    import torch
    from torch.profiler import ProfilerActivity, profile
    _register_models()
    dev = _device(a.device)
    model = timm.create_model(a.model, img_size=a.img_size).to(dev)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
    rows = []
    for dtype in a.dtypes.split(','):
        for task in ('inference', 'train'):
            model.train(task == 'train')

            def step():
                with torch.autocast(dev.type, dtype=getattr(torch, dtype)):
                    if task == 'inference':
                        with torch.inference_mode():
                            model(x)
                        return
                    loss = model(x).float().logsumexp(-1).mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
            row = dict(model=a.model, dtype=dtype, task=task, batch=a.batch, img_size=a.img_size, device=str(dev),
                       error='')
            try:
                step()
                _sync(dev)
                with profile(activities=activities) as p:
                    step()
                    _sync(dev)
                ev = p.key_averages()
                ops = {e.key: e.count for e in ev if 'attention' in e.key and e.key.startswith('aten::')}
                kernels = sorted({e.key[:80] for e in ev if not e.key.startswith(('aten::', 'cuda', 'Memcpy', 'Memset'))
                                  and re.search(r'flash|fmha|attention|attn|sdpa|cudnn', e.key, re.I)})
                row.update(backend=sdpa_backend(ops), ops=ops, kernels=kernels[:8])
            except Exception as e:
                row.update(backend='error', error=f'{type(e).__name__}: {e}'.splitlines()[0][:300])
            rows.append(row)
            print(f'sdpa {dtype} {task}: {row.get("backend")} {row.get("ops", "")} {row["error"]}', flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + '\n')


def _time(fn, dev, warm, iters):
    """Median seconds per call of fn over `iters` calls after `warm` calls (CUDA events on a GPU)."""
    import torch
    for _ in range(warm):
        fn()
    _sync(dev)
    times = []
    for _ in range(iters):
        if dev.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_for(gpu_name):
    for key, peak, source in DENSE_BF16_PEAK:
        if key in gpu_name:
            return peak, source
    return None, f'no dense bf16 peak on record for "{gpu_name}"'


def cmd_flops(a):
    """Achieved FLOP rate of bf16-autocast inference, eager and compiled, and of one large bf16 matmul."""
    import timm
    import torch
    from timm_hvt.flops import count_gmacs
    _register_models()
    dev = _device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'
    peak, source = peak_for(name) if dev.type == 'cuda' else (None, 'no dense bf16 peak is used for a CPU')
    res = dict(device=name, peak_flops=peak, peak_source=source, batch=a.batch, img_size=a.img_size, rows=[])
    n = a.matmul
    mats = [(torch.randn(n, n, device=dev, dtype=torch.bfloat16), torch.randn(n, n, device=dev, dtype=torch.bfloat16))
            for _ in range(3)]  # random data, rotated
    it = iter(range(10 ** 9))

    def mm():
        x, y = mats[next(it) % len(mats)]
        return x @ y
    t = _time(mm, dev, 3, a.iters)
    res['matmul'] = dict(shape=f'{n}x{n}x{n}', flops=2 * n ** 3 / t, frac_peak=2 * n ** 3 / t / peak if peak else None)
    print(f'flops: bf16 matmul {n}^3 {2 * n ** 3 / t / 1e12:.1f} TFLOP/s', flush=True)
    for model_name in a.models.split(','):
        model = timm.create_model(model_name, img_size=a.img_size).eval()
        gmacs = count_gmacs(model, (3, a.img_size, a.img_size))
        model = model.to(dev)
        x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=dev)
        for mode in (['eager', 'compile'] if a.compile else ['eager']):
            fn = torch.compile(model) if mode == 'compile' else model

            def step():
                with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
                    return fn(x)
            row = dict(model=model_name, mode=mode, gmacs=gmacs, error='')
            try:
                t0 = time.perf_counter()
                step()
                _sync(dev)
                row['first_call_s'] = round(time.perf_counter() - t0, 2)
                t = _time(step, dev, 3, a.iters)
                flops = 2e9 * gmacs * a.batch / t
                row.update(ms=t * 1e3, img_per_s=a.batch / t, flops=flops, frac_peak=flops / peak if peak else None,
                           frac_matmul=flops / res['matmul']['flops'])
            except Exception as e:
                row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
            res['rows'].append(row)
            print(f'flops: {model_name} {mode}: {row}', flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + '\n')


def cmd_digits(a):
    from benchmarks.digits import export_digits
    counts = export_digits(a.root, img_size=a.img_size, limit=a.limit or None)
    print(json.dumps(counts))


def _nvidia_smi():
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=60)
        head = subprocess.run(['nvidia-smi'], capture_output=True, text=True, timeout=60).stdout
        cuda = re.search(r'CUDA Version:\s*([\d.]+)', head)
        return out.stdout.strip(), cuda.group(1) if cuda else None
    except (OSError, subprocess.SubprocessError) as e:
        return f'nvidia-smi not available ({type(e).__name__})', None


def cmd_env(a):
    import timm
    import torch
    import timm_hvt
    smi, driver_cuda = _nvidia_smi()
    cuda = torch.cuda.is_available()
    version, source = scripts_version(Path(a.scripts)) if a.scripts else (None, 'no scripts folder given')
    env = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        command=a.command, quick=a.quick, device=a.device,
        gpu=torch.cuda.get_device_name() if cuda else 'none (CPU only)',
        gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1) if cuda else None,
        compute_capability='.'.join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        nvidia_smi=smi, driver_cuda=driver_cuda, torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        torch=torch.__version__, timm=timm.__version__, timm_file=timm.__file__, timm_hvt=timm_hvt.__version__,
        python=platform.python_version(), cpu=platform.processor() or platform.machine(), logical_cpus=os.cpu_count(),
        timm_scripts=str(Path(a.scripts).resolve()) if a.scripts else None, timm_scripts_version=version,
        timm_scripts_version_source=source,
    )
    Path(a.out).write_text(json.dumps(env, indent=1) + '\n')
    print(json.dumps(env, indent=1))


# ---------------------------------------------------------------------------------------------- the summary
TRAIN_LINE = re.compile(r'Train: (\d+) \[\s*(\d+)/(\d+).*?Loss: (\S+) \((\S+)\)\s+Time: ([\d.]+)s,\s*([\d.]+)/s')


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _scaler_skips(ckpt, updates):
    """fp16 steps the GradScaler skipped, read off its saved state: each skip halves the scale from 2**16, and the
    growth tracker counts the updates since the last skip. Valid while no growth can have happened (< 2000 updates)."""
    import argparse as _argparse
    import torch
    try:
        with torch.serialization.safe_globals([_argparse.Namespace]):
            state = torch.load(ckpt, map_location='cpu', weights_only=True).get('amp_scaler')
    except Exception as e:
        return None, None, f'checkpoint unreadable ({type(e).__name__})'
    if not state:
        return None, None, 'no GradScaler state in the checkpoint (train.py uses one for float16 on CUDA only)'
    if updates >= state.get('growth_interval', 2000):
        return None, None, 'too many updates to tell skips from growth'
    skips = round(math.log2(65536.0 / float(state['scale'])))
    last = updates - int(state['_growth_tracker']) if skips else 0
    return skips, last, f'scale {float(state["scale"]):g}, {int(state["_growth_tracker"])} updates since the last skip'


def summarize_train(work, run, cfg):
    d = work / 'train' / run
    row = dict(group='train', run=run, model=cfg['model'], impl='ours', task='train', dtype=cfg['dtype'],
               compile=bool(cfg['compile']), batch=cfg['batch'], img_size=cfg['img_size'])
    log = work / 'logs' / f'train_{run}.log'
    if not log.is_file():
        return None  # the step did not run (steps.csv says why)
    if not (d / 'summary.csv').is_file():
        return dict(row, error=f'no summary.csv (see {log.name})')
    summary = _read_csv(d / 'summary.csv')
    steps = [m.groups() for m in TRAIN_LINE.finditer(log.read_text(errors='replace'))] if log.is_file() else []
    losses = [float(s[3]) for s in steps]
    epoch_loss = [float(r['train_loss']) for r in summary]
    later = [float(s[6]) for s in steps if int(s[0]) > 0] or [float(s[6]) for s in steps[2:]]
    top1 = [float(r['eval_top1']) for r in summary if r.get('eval_top1')]
    updates = len(steps)
    skips, last_skip, why = _scaler_skips(d / 'last.pth.tar', updates) if cfg['dtype'] == 'float16' else (
        None, None, 'bfloat16: no GradScaler')
    return dict(row, epochs=len(summary), updates=updates, loss_first=epoch_loss[0], loss_last=epoch_loss[-1],
                loss_finite=all(math.isfinite(v) for v in losses + epoch_loss), step_loss_first=losses[0] if losses
                else None, step_loss_last=losses[-1] if losses else None, top1=top1[-1] if top1 else None,
                top1_best=max(top1) if top1 else None, img_per_s=statistics.median(later) if later else None,
                skipped_steps=skips, last_skipped_update=last_skip, detail=why, error='')


def _median_ratio(a, b):
    """a over b, ratio of medians, with the lowest and highest ratio within one round."""
    rounds = sorted(set(a) & set(b))
    if not rounds:
        return None, None, None
    per = [a[r] / b[r] for r in rounds]
    return statistics.median(a.values()) / statistics.median(b.values()), min(per), max(per)


def _gmacs(name, img_size):
    import timm
    import torch
    from timm_hvt.flops import count_gmacs
    size = (3, img_size, img_size)
    try:
        with torch.device('meta'):  # shapes only: no weights to initialise
            return count_gmacs(timm.create_model(name, img_size=img_size), size)
    except Exception:
        try:
            return count_gmacs(timm.create_model(name, img_size=img_size), size)
        except Exception:
            return None


def fmt(v):
    if v is None or (isinstance(v, float) and v != v):
        return '–'
    if isinstance(v, bool):
        return 'yes' if v else 'no'
    if isinstance(v, float):
        return f'{v:.3g}' if abs(v) < 1000 else f'{v:.0f}'
    return str(v).replace('|', '\\|')


def md_table(rows, cols):
    lines = ['| ' + ' | '.join(h for h, _ in cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(r.get(k)) for _, k in cols) + ' |' for r in rows]
    return '\n'.join(lines) + '\n'


def cmd_summarize(a):
    _register_models()
    work, res_dir = Path(a.work), Path(a.results)
    env = json.loads((res_dir / 'env.json').read_text()) if (res_dir / 'env.json').is_file() else {}
    steps = _read_csv(work / 'steps.csv') if (work / 'steps.csv').is_file() else []
    runs = json.loads(a.runs)
    rows, goals = [], []

    # train.py and validate.py
    train = {}
    for run, cfg in runs.items():
        train[run] = summarize_train(work, run, cfg)
        if train[run] is None:
            continue
        rows.append(train[run])
        vf = work / f'validate_{run}.json'
        if vf.is_file():
            v = json.loads(vf.read_text())
            best = train[run].get('top1_best')
            rows.append(dict(group='validate', run=run, model=cfg['model'], impl='ours', task='validate',
                             dtype=cfg['dtype'], compile=False, batch=cfg['val_batch'], img_size=cfg['img_size'],
                             top1=v.get('top1'), top5=v.get('top5'), error='',
                             detail=f'validate.py --amp on model_best of run {run}; train.py\'s best eval top-1 '
                                    f'{fmt(best)}'))

    # benchmark.py
    bench, bench_rows = {}, []
    bf = work / 'bench.jsonl'
    for line in (bf.read_text().splitlines() if bf.is_file() else []):
        r = json.loads(line)
        res = r.get('result') or {}
        pre = 'infer' if r['mode'] == 'inference' else 'train'
        ips = res.get(f'{pre}_samples_per_sec')
        if ips is not None and not r['error']:
            bench.setdefault((r['model'], r['mode']), {})[r['round']] = ips
        bench_rows.append(dict(r, ips=ips, step_ms=res.get(f'{pre}_step_time'), batch=res.get(f'{pre}_batch_size')))
    cases = {}
    for r in bench_rows:
        c = cases.setdefault((r['model'], r['mode']), dict(ips=[], peak=[], ms=[], errors=[], batch=r['batch']))
        if r['error']:
            c['errors'].append(r['error'])
        else:
            c['ips'].append(r['ips']), c['ms'].append(r['step_ms'])
            if r['peak_mb'] is not None:
                c['peak'].append(r['peak_mb'])
    gm = {}
    for (model, mode), c in cases.items():
        arch = model[len('authors_'):] if model.startswith('authors_') else model
        if model not in gm:
            gm[model] = _gmacs(model, a.bench_img_size)
        ips = statistics.median(c['ips']) if c['ips'] else None
        rows.append(dict(group='benchmark', model=arch, impl='authors' if model.startswith('authors_') else 'ours',
                         task=mode, dtype=a.bench_dtype, compile=False, batch=c['batch'] or a.bench_batch,
                         img_size=a.bench_img_size, img_per_s=ips, img_per_s_min=min(c['ips']) if c['ips'] else None,
                         img_per_s_max=max(c['ips']) if c['ips'] else None, rounds=len(c['ips']),
                         ms_per_step=statistics.median(c['ms']) if c['ms'] else None,
                         peak_mb=max(c['peak']) if c['peak'] else None, gmacs=gm[model],
                         tflops=2e9 * gm[model] * ips * (3 if mode == 'train' else 1) / 1e12 if gm[model] and ips
                         else None, error='; '.join(sorted(set(c['errors']))) if c['errors'] else ''))

    # SDPA and FLOP rate
    sdpa = json.loads((work / 'sdpa.json').read_text()) if (work / 'sdpa.json').is_file() else []
    for s in sdpa:
        rows.append(dict(group='sdpa', model=s['model'], impl='ours', task=s['task'], dtype=s['dtype'],
                         batch=s['batch'], img_size=s['img_size'], backend=s.get('backend'),
                         detail=' '.join(f'{k}x{v}' for k, v in (s.get('ops') or {}).items()), error=s['error']))
    flops = json.loads((work / 'flops.json').read_text()) if (work / 'flops.json').is_file() else {}
    for f in flops.get('rows', []):
        rows.append(dict(group='flops', model=f['model'], impl='ours', task='inference', dtype='bfloat16',
                         compile=f['mode'] == 'compile', batch=flops['batch'], img_size=flops['img_size'],
                         img_per_s=f.get('img_per_s'), ms_per_step=f.get('ms'), gmacs=f['gmacs'],
                         tflops=f['flops'] / 1e12 if f.get('flops') else None, frac_peak=f.get('frac_peak'),
                         frac_matmul=f.get('frac_matmul'), first_call_s=f.get('first_call_s'), error=f['error']))
    if flops.get('matmul'):
        m = flops['matmul']
        rows.append(dict(group='flops', model=f'matmul {m["shape"]}', impl='torch', task='gemm', dtype='bfloat16',
                         tflops=m['flops'] / 1e12, frac_peak=m['frac_peak'], error=''))

    # goals
    def goal(name, target, measured, met, detail=''):
        goals.append(dict(goal=name, target=target, measured=measured,
                          met='not measured' if met is None else 'yes' if met else 'no', detail=detail))
    for run, t in train.items():
        if t is None or t.get('error'):
            why = t['error'] if t else f'train_{run} did not run (steps.csv)'
            goal(f'train.py {run}: losses finite and falling', 'finite; last epoch < first', None, None, why)
            goal(f'train.py {run}: held-out top-1', f'>= {TOP1_GOAL:g} (chance {CHANCE_TOP1:g})', None, None, why)
            continue
        falls = t['loss_last'] < t['loss_first']
        goal(f'train.py {run}: losses finite and falling', 'finite; last epoch < first',
             f'{t["loss_first"]:.3f} -> {t["loss_last"]:.3f} over {t["epochs"]} epochs', t['loss_finite'] and falls,
             '' if t['loss_finite'] else 'a non-finite loss was logged')
        goal(f'train.py {run}: held-out top-1', f'>= {TOP1_GOAL:g} (chance {CHANCE_TOP1:g})', t['top1'],
             None if t['top1'] is None else t['top1'] >= TOP1_GOAL, f'after {t["epochs"]} epochs')
        if runs[run]['dtype'] == 'float16':
            s, last = t['skipped_steps'], t['last_skipped_update']
            goal(f'train.py {run}: fp16 steps skipped by the GradScaler', f'none after update {FIRST_FEW_UPDATES}',
                 None if s is None else f'{s} skipped' + (f', the last at update {last}' if s else ''),
                 None if s is None else s == 0 or last <= FIRST_FEW_UPDATES, t['detail'])

    def ratio(x, y, mode):
        a_, b_ = bench.get((x, mode)), bench.get((y, mode))
        return _median_ratio(a_, b_) if a_ and b_ else (None, None, None)
    for num, den, mode, target, name in (
            ('hvt_s_4', 'deit_small_patch16_224', 'inference', 2.5, 'hvt_s_4 / deit_small, inference images/s'),
            ('hvt_s_4', 'authors_hvt_s_4', 'inference', 1.0, 'hvt_s_4 ours / authors, inference images/s'),
            ('hvt_s_4', 'authors_hvt_s_4', 'train', 1.0, 'hvt_s_4 ours / authors, training images/s')):
        r, lo, hi = ratio(num, den, mode)
        goal(f'benchmark.py {name}', f'>= {target:g}', r, None if r is None else r >= target,
             '' if r is None else f'per round {lo:.3g}-{hi:.3g}')
    mem = {m: cases.get((m, 'train'), {}).get('peak') for m in ('hvt_s_4', 'deit_small_patch16_224')}
    if all(mem.values()):
        r = max(mem['hvt_s_4']) / max(mem['deit_small_patch16_224'])
        goal('benchmark.py hvt_s_4 / deit_small, peak training memory', '<= 1', r, r <= 1.0,
             f'{max(mem["hvt_s_4"]):.0f} / {max(mem["deit_small_patch16_224"]):.0f} MB')
    else:
        goal('benchmark.py hvt_s_4 / deit_small, peak training memory', '<= 1', None, None,
             'no CUDA memory counters (CPU run)' if env.get('device', '').startswith('cpu') else 'not measured')
    fused = [s for s in sdpa if not s['error']]
    if fused:
        names = sorted({s['backend'] for s in fused})
        goal('SDPA kernel of HVT attention under AMP', 'flash or memory-efficient, not math', ', '.join(names),
             all(s['backend'] not in ('math', 'none') for s in fused),
             '; '.join(f'{s["dtype"]} {s["task"]}: {s["backend"]}' for s in fused))
    else:
        goal('SDPA kernel of HVT attention under AMP', 'flash or memory-efficient, not math', None, None)

    cols = ['group', 'run', 'model', 'impl', 'task', 'dtype', 'compile', 'batch', 'img_size', 'img_per_s',
            'img_per_s_min', 'img_per_s_max', 'rounds', 'ms_per_step', 'peak_mb', 'gmacs', 'tflops', 'frac_peak',
            'frac_matmul', 'first_call_s', 'epochs', 'updates', 'loss_first', 'loss_last', 'loss_finite', 'top1',
            'top1_best', 'top5', 'skipped_steps', 'last_skipped_update', 'backend', 'detail', 'error']
    with open(res_dir / 'results.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
        w.writeheader()
        w.writerows(rows)
    with open(res_dir / 'goals.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['goal', 'target', 'measured', 'met', 'detail'])
        w.writeheader()
        w.writerows(goals)

    quick = env.get('quick')
    text = ['# HVT on a GPU: timm\'s scripts, mixed precision, SDPA, FLOP rate\n']
    if quick:
        text.append('**A `--quick` run: tiny sizes on the CPU, to check the plumbing. None of its figures is a GPU '
                    'measurement, and its goals say nothing about HVT.**\n')
    text.append(f"{env.get('date', '?')}, `{env.get('command', '?')}` on {env.get('gpu', '?')} "
                f"(nvidia-smi: {env.get('nvidia_smi', '–')}; CUDA {env.get('driver_cuda') or '–'} driver, "
                f"{env.get('torch_cuda') or '–'} torch), torch {env.get('torch', '?')}, timm {env.get('timm', '?')}, "
                f"timm-hvt {env.get('timm_hvt', '?')}, Python {env.get('python', '?')}; timm's scripts "
                f"{env.get('timm_scripts_version') or 'unverified'} ({env.get('timm_scripts') or 'not given'}).\n")
    text += ['## Steps\n', md_table(steps, [('step', 'step'), ('status', 'status'), ('seconds', 'seconds'),
                                            ('detail', 'detail')])]
    text += ['\n## Goals\n', md_table(goals, [(k, k) for k in ('goal', 'target', 'measured', 'met', 'detail')])]
    tr = [r for r in rows if r['group'] in ('train', 'validate')]
    text += ['\n## train.py and validate.py on the digits ImageFolder\n',
             'img/s: median of the per-update rates train.py logs, after the first epoch (compilation, warm-up).\n\n',
             md_table(tr, [('script', 'group'), ('run', 'run'), ('model', 'model'), ('amp dtype', 'dtype'),
                           ('compile', 'compile'), ('batch', 'batch'), ('img', 'img_size'), ('epochs', 'epochs'),
                           ('updates', 'updates'),
                           ('loss first epoch', 'loss_first'), ('loss last epoch', 'loss_last'),
                           ('finite', 'loss_finite'), ('top-1', 'top1'), ('top-5', 'top5'), ('img/s', 'img_per_s'),
                           ('fp16 skipped', 'skipped_steps'), ('last skipped update', 'last_skipped_update'),
                           ('error', 'error')])]
    br = [r for r in rows if r['group'] == 'benchmark']
    text += [f'\n## benchmark.py --amp --amp-dtype {a.bench_dtype}, batch {a.bench_batch}, {a.bench_img_size}x'
             f'{a.bench_img_size}\n',
             'Median images/s over the rounds (min-max beside it); peak: torch.cuda.max_memory_allocated over one '
             'run of the script; TFLOP/s: 2 x GMACs x images/s (x3 for a training step).\n\n',
             md_table(br, [('model', 'model'), ('impl', 'impl'), ('mode', 'task'), ('img/s', 'img_per_s'),
                           ('min', 'img_per_s_min'), ('max', 'img_per_s_max'), ('rounds', 'rounds'),
                           ('ms/step', 'ms_per_step'), ('peak MB', 'peak_mb'), ('GMACs', 'gmacs'),
                           ('TFLOP/s', 'tflops'), ('error', 'error')])]
    text += ['\n## SDPA kernel under autocast\n', md_table([r for r in rows if r['group'] == 'sdpa'], [
        ('model', 'model'), ('amp dtype', 'dtype'), ('task', 'task'), ('batch', 'batch'), ('img', 'img_size'),
        ('kernel', 'backend'),
        ('aten ops (calls)', 'detail'), ('error', 'error')])]
    text += ['\n## Achieved FLOP rate, bf16 autocast inference\n',
             f"Peak: {fmt(flops.get('peak_flops') and flops['peak_flops'] / 1e12)} TFLOP/s dense bf16 — "
             f"{flops.get('peak_source', 'not measured')}. frac matmul: against the measured rate of a bf16 "
             'matmul (random data) on the same device.\n\n',
             md_table([r for r in rows if r['group'] == 'flops'], [
                 ('model', 'model'), ('compile', 'compile'), ('batch', 'batch'), ('img', 'img_size'),
                 ('img/s', 'img_per_s'),
                 ('ms', 'ms_per_step'), ('GMACs', 'gmacs'), ('TFLOP/s', 'tflops'), ('frac peak', 'frac_peak'),
                 ('frac matmul', 'frac_matmul'), ('first call s', 'first_call_s'), ('error', 'error')])]
    not_run = [s for s in steps if s['status'] != 'ok']
    if not_run:
        text += ['\n## Not run or failed\n'] + [f'- `{s["step"]}`: {s["status"]}: {s["detail"]}\n' for s in not_run]
    (res_dir / 'results.md').write_text('\n'.join(text))
    print(md_table(goals, [(k, k) for k in ('goal', 'target', 'measured', 'met')]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('check-scripts')
    s.add_argument('folder')
    s = sub.add_parser('env')
    s.add_argument('out')
    s.add_argument('--scripts', default='')
    s.add_argument('--device', default='cuda')
    s.add_argument('--command', default='')
    s.add_argument('--quick', action='store_true')
    s = sub.add_parser('digits')
    s.add_argument('root')
    s.add_argument('--img-size', type=int, default=224)
    s.add_argument('--limit', type=int, default=0)
    s = sub.add_parser('script')
    s.add_argument('script')
    s.add_argument('args', nargs=argparse.REMAINDER)
    s = sub.add_parser('bench')
    s.add_argument('out')
    s.add_argument('--scripts', required=True)
    s.add_argument('--models', required=True)
    s.add_argument('--device', default='cuda')
    s.add_argument('--batch', type=int, default=256)
    s.add_argument('--rounds', type=int, default=2)
    s.add_argument('--warm', type=int, default=10)
    s.add_argument('--iters', type=int, default=50)
    s.add_argument('--amp-dtype', default='bfloat16')
    s.add_argument('--img-size', type=int, default=224)
    s = sub.add_parser('sdpa')
    s.add_argument('out')
    s.add_argument('--model', default='hvt_s_4')
    s.add_argument('--device', default='cuda')
    s.add_argument('--batch', type=int, default=256)
    s.add_argument('--dtypes', default='float16,bfloat16')
    s.add_argument('--img-size', type=int, default=224)
    s = sub.add_parser('flops')
    s.add_argument('out')
    s.add_argument('--models', default='hvt_s_0,hvt_s_4')
    s.add_argument('--device', default='cuda')
    s.add_argument('--batch', type=int, default=256)
    s.add_argument('--iters', type=int, default=30)
    s.add_argument('--matmul', type=int, default=8192)
    s.add_argument('--compile', action='store_true')
    s.add_argument('--img-size', type=int, default=224)
    s = sub.add_parser('summarize')
    s.add_argument('work')
    s.add_argument('results')
    s.add_argument('--runs', required=True, help='JSON: run name -> model, dtype, compile, batch, img_size, val_batch')
    s.add_argument('--bench-batch', type=int, default=256)
    s.add_argument('--bench-dtype', default='bfloat16')
    s.add_argument('--bench-img-size', type=int, default=224)
    a = p.parse_args(argv)
    globals()['cmd_' + a.cmd.replace('-', '_')](a)


if __name__ == '__main__':
    main()
