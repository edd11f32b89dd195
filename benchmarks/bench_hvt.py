#!/usr/bin/env python3
"""HVT against DeiT, PiT and the authors' implementation: speed, cost and memory, in one run.

    python benchmarks/bench_hvt.py            # full run (6-12 min on 2 cores), writes benchmarks/results/
    python benchmarks/bench_hvt.py --quick    # every file and row in about a minute (batch 2, one round)

Each group of cases is timed in interleaved rounds: a round times every case once, the first case rotating from
round to round, so load from elsewhere falls on all cases alike. A figure is the median of its rounds; a ratio is
the ratio of two medians, shown with the lowest and highest ratio within one round. "authors" is
benchmarks/authors_hvt.py, the authors' computation (matmul + softmax attention, their token pooling, separate bias
adds) over the same weights as ours.
"""
import argparse, copy, datetime, functools, json, math, os, platform, subprocess, sys, time, weakref  # noqa: E401
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import timm
import timm_hvt
from timm_hvt.flops import count_gmacs
from timm_hvt.paper import PAPER_BASELINES, PAPER_RESULTS

from benchmarks import authors_hvt as authors

ROOT = Path(__file__).resolve().parents[1]

HVT = [f'hvt_{w}_{m}' for w in ('ti', 's') for m in range(5)]
MODELS = HVT + ['deit_tiny_patch16_224', 'deit_small_patch16_224', 'pit_ti_224', 'pit_xs_224', 'pit_s_224']
PAPER = {n: (r.gmacs, r.top1) for n, r in {**PAPER_RESULTS, **PAPER_BASELINES}.items()}
PAPER.update(pit_ti_224=(0.7, 73.0), pit_xs_224=(1.4, 78.1), pit_s_224=(2.9, 80.9))  # PiT paper, Table 3
VS_AUTHORS = ['hvt_ti_1', 'hvt_s_4']  # the lead over the authors' code is judged on these
SWEEP = ['hvt_ti_1', 'hvt_s_1', 'hvt_s_4', 'deit_tiny_patch16_224', 'deit_small_patch16_224']  # PiT: no dynamic size
STEADY_MALLOC = ('glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:'
                 'glibc.malloc.top_pad=268435456')  # fixed: no adaptive mmap threshold, no trimming
BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # autocast bf16 only where the CPU has native bf16
authors_forward = authors.forward.__wrapped__  # without its no_grad, so that a training step can use it
weights = functools.lru_cache(authors.random_state_dict)  # the authors' random weights (O(1) logits), one draw


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive during a call, op by op, on top of the weights and inputs."""

    def __init__(self, existing):
        super().__init__()
        self.live = {t.untyped_storage().data_ptr(): 0 for t in existing}
        self.base = sum(t.untyped_storage().nbytes() for t in existing)
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            ptr = t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) and t._base is None else 0
            if ptr and ptr not in self.live:
                self.live[ptr] = t.untyped_storage().nbytes()
                self.now += self.live[ptr]
                self.peak = max(self.peak, self.now)
                weakref.finalize(t.untyped_storage(), self._free, ptr)
        return out

    def _free(self, ptr):
        self.now -= self.live.pop(ptr, 0)


def create(name, **kw):
    model = timm.create_model(name, **kw).eval().requires_grad_(False)
    if name in authors.VARIANTS:  # the weights the authors' forward gets too
        model.load_state_dict(weights(name))
    return model


def infer(fn, x, amp=False):
    def step():
        with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled=amp):
            return fn(x)
    return step


def train_step(fn, params, x):
    y = torch.arange(x.shape[0]) % 1000

    def step():
        F.cross_entropy(fn(x), y).backward()
        for p in params:
            p.grad = None
    return step


def gemm_case(m, k, n):
    x, w = torch.randn(m, k), torch.randn(n, k)
    return dict(step=lambda: torch.matmul(x, w.t()), flop=2.0 * m * k * n, model=f'{m}x{k}x{n}', impl='torch.matmul',
                task='gemm')


def onnx_step(model, x):
    import io
    import onnxruntime as ort
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=['CPUExecutionProvider'])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def plan(args, B):
    """The groups, as (name, rounds, cases); a case is a dict: step (the timed call), flop per call, row labels."""
    base, compiled = {n: create(n) for n in args.models}, {}
    info = {(n, 224): (sum(p.numel() for p in m.parameters()) / 1e6, count_gmacs(m)) for n, m in base.items()}
    xb, x1 = torch.randn(B, 3, 224, 224), torch.randn(1, 3, 224, 224)

    def ours(n, x, mode='eager', amp=False):
        fn = base[n] if mode == 'eager' else compiled.setdefault(n, torch.compile(base[n], dynamic=False))
        return dict(step=infer(fn, x, amp), model=n, impl='ours', mode=mode, batch=len(x),
                    dtype='bf16' if amp else 'fp32', mem=[*base[n].parameters(), x] if mode == 'eager' else None)

    def theirs(n, x, mode='eager'):
        fn = functools.partial(authors_forward, weights(n))
        fn = fn if mode == 'eager' else compiled.setdefault(('authors', n), torch.compile(fn, dynamic=False))
        return dict(step=infer(fn, x), model=n, impl='authors', mode=mode, batch=len(x), dtype='fp32')

    def trainee(n, impl):
        if impl == 'ours':
            model = copy.deepcopy(base[n]).train().requires_grad_(True)
            fn, params = model, list(model.parameters())
        else:
            params = {k: v.clone().requires_grad_(True) for k, v in weights(n).items()}
            fn, params = functools.partial(authors_forward, params), list(params.values())
        return dict(step=train_step(fn, params, xb), model=n, impl=impl, task='train', batch=B, dtype='fp32',
                    mem=params + [xb])

    vs, cmp = [n for n in VS_AUTHORS if n in base], [] if args.no_compile else ['eager', 'compile']
    g = [('vs_authors', args.rounds, [theirs(n, xb, m) if who else ours(n, xb, m) for n in vs
                                      for m in (cmp or ['eager']) for who in (0, 1)]
          + [ours('hvt_s_1', xb, m) for m in (cmp or ['eager']) if 'hvt_s_1' in base]
          + [gemm_case(2048, 2048, 2048)] + [gemm_case(B * 97, k, n) for k, n in ((384, 1152), (384, 384),
                                                                                  (384, 1536), (1536, 384))]),
         ('train', args.rounds, [trainee(n, i) for n in vs for i in ('ours', 'authors')]),
         ('models', args.rounds_other, [ours(n, xb, amp=a) for a in (False, True)[:1 + BF16] for n in base])]
    b1 = [c for n in vs for c in (ours(n, x1), theirs(n, x1))]
    for n in vs:
        b1 += [ours(n, x1, 'compile')] if cmp else []
        b1 += [dict(step=onnx_step(base[n], x1), model=n, impl='onnxruntime', batch=1, dtype='fp32')]
        b1 += [ours(n, x1, amp=True)] if BF16 else []
    g.append(('batch1', args.rounds_other, b1 + [ours(n, x1) for n in base if n not in vs]))
    sweep = []
    for n in [n for n in SWEEP if n in base]:
        model = timm.create_model(n, dynamic_img_size=True).eval().requires_grad_(False)
        model.load_state_dict(base[n].state_dict())
        for s in args.sizes:
            info[(n, s)] = (info[(n, 224)][0], count_gmacs(model, (3, s, s)))
            sweep.append(dict(step=infer(model, torch.randn(args.sweep_batch, 3, s, s)), model=n, impl='ours',
                              batch=args.sweep_batch, img_size=s, dtype='fp32'))
    g.append(('sweep', args.rounds_other, sweep))
    for name, _, cases in g:
        for c in cases:
            c['group'] = name
            c.setdefault('img_size', 224), c.setdefault('mode', 'eager'), c.setdefault('task', 'infer')
            if 'flop' not in c:  # a training step: forward + backward, about 3 forwards' MACs
                c['flop'] = 2e9 * c['batch'] * info[(c['model'], c['img_size'])][1] * (3 if c['task'] == 'train' else 1)
    return g, base, info


def run(groups, quick, bar):
    """Warm every case up (compiles, sets calls per sample >= 0.25 s, tracks peak memory), then time the rounds."""
    for name, rounds, cases in groups:
        bar.set_description(name)
        for c in cases:
            c.update(times=[], inner=1, error='')
            try:
                t0 = time.perf_counter()
                c['step']()
                c['first_s'] = time.perf_counter() - t0
                if not quick:
                    t0 = time.perf_counter()
                    c['step']()
                    c['inner'] = max(1, math.ceil(0.25 / (time.perf_counter() - t0)))
                if c.get('mem'):
                    with PeakMemory(c['mem']) as pm:
                        c['step']()
                    c['peak_mb'] = (pm.base + pm.peak) / 2 ** 20
            except Exception as e:  # the row reports the error; the run goes on
                c['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:200]
            bar.update(1)
        for r in range(rounds):
            live = [c for c in cases if not c['error']]
            for c in live[r % max(1, len(live)):] + live[:r % max(1, len(live))]:
                t0 = time.perf_counter()
                for _ in range(c['inner']):
                    c['step']()
                c['times'].append((time.perf_counter() - t0) / c['inner'])
                bar.update(1)


def per_round(a, b):
    """b's time over a's per round (a's speed-up over b): median ratio, lowest, highest."""
    r = [tb / ta for ta, tb in zip(a['times'], b['times'])]
    return pd.Series(b['times']).median() / pd.Series(a['times']).median(), min(r), max(r)


def targets(groups, B):
    cases = [c for _, _, cs in groups for c in cs if c['times'] and c['group'] in ('vs_authors', 'train')]

    def find(**kw):
        return next((c for c in cases if all(c.get(k) == v for k, v in kw.items())), None)
    rows = []
    for n in VS_AUTHORS:  # never slower than the authors' code; a larger lead is out of reach (benchmarks/README.md)
        for task, mode, goal in (('infer', 'eager', 1.0), ('infer', 'compile', 1.0), ('train', 'eager', 1.0)):
            a, b = find(model=n, impl='ours', task=task, mode=mode, batch=B), find(
                model=n, impl='authors', task=task, mode=mode, batch=B)
            rows.append((f'{n} ours / authors, {"training step" if task == "train" else "inference " + mode}',
                         goal, *(per_round(a, b) if a and b else [float('nan')] * 3)))
    gemms = [c for c in cases if c['task'] == 'gemm']
    ref = max(gemms, key=lambda c: c['flop'] / pd.Series(c['times']).median()) if gemms else None
    for mode, goal in (('eager', 0.8), ('compile', 0.9)):
        m = find(model='hvt_s_1', impl='ours', mode=mode, batch=B)
        rows.append((f'hvt_s_1 {mode}, fraction of the fp32 GEMM rate', goal, *(
            [v * m['flop'] / ref['flop'] for v in per_round(m, ref)] if m and ref else [float('nan')] * 3)))
    df = pd.DataFrame(rows, columns=[f'target (fp32, batch {B})', 'goal', 'measured', 'round min', 'round max'])
    df['met'] = ['yes' if v >= g else 'no' if v == v else 'not measured' for v, g in zip(df.measured, df.goal)]
    return df, ref


def profile(names, B, modes):
    """torch.profiler self time and calls per op group, ours against the authors', one batch-B forward each."""
    from torch.profiler import profile as prof
    groups = {'aten::addmm': 'GEMM', 'aten::mm': 'GEMM', 'aten::_scaled_dot': 'attention', 'aten::bmm': 'attention',
              'aten::_softmax': 'attention', 'aten::div': 'attention', 'aten::add': 'adds (bias, residual, position)',
              'aten::copy_': 'copies', 'aten::clone': 'copies', 'aten::gelu': 'GELU', 'aten::native_layer': 'LayerNorm',
              'aten::mkldnn_conv': 'patch conv', 'aten::max_pool': 'token pooling', 'aten::amax': 'token pooling',
              'aten::maximum': 'token pooling', '## Call CompiledFxGraph': 'fused kernels (inductor)'}
    rows, x = [], torch.randn(B, 3, 224, 224)
    for n, mode in [(n, m) for n in names for m in modes]:
        for impl, fn in (('ours', create(n)), ('authors', functools.partial(authors_forward, weights(n)))):
            fn = torch.compile(fn, dynamic=False) if mode == 'compile' else fn
            infer(fn, x)()
            with prof() as p:
                infer(fn, x)()
            for e in p.key_averages():
                op = next((v for k, v in groups.items() if e.key.startswith(k)), 'other')
                rows.append(dict(model=n, mode=mode, impl=impl, ops=op, ms=e.self_cpu_time_total / 1e3, calls=e.count))
    df = pd.DataFrame(rows).groupby(['model', 'mode', 'impl', 'ops'], sort=False).sum().reset_index()
    df['share'] = df.ms / df.groupby(['model', 'mode', 'impl']).ms.transform('sum')
    return df


def cpu():
    """The CPU's name and family and the vector extensions that pick torch's kernels (AVX2, AVX-512, bf16, AMX)."""
    first = Path('/proc/cpuinfo').read_text().split('\n\n')[0] if os.path.exists('/proc/cpuinfo') else ''
    info = dict(map(str.strip, ln.split(':', 1)) for ln in first.splitlines() if ':' in ln)
    isa = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile') if f in info.get('flags', '').split()]
    return f"{info.get('model name', platform.machine())} (family {info.get('cpu family', '?')}; {' '.join(isa)})"


def startup_ms():
    """What the start-up hook (timm_hvt_autoload.pth) adds to every interpreter, as python -X importtime sees it."""
    err = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'pass'], capture_output=True, text=True).stderr
    us = [int(ln.split('|')[1]) for ln in err.splitlines() if ln.rstrip().endswith('_timm_hvt_autoload')]
    return us[0] / 1e3 if us else float('nan')


def md(df):
    def fmt(v):
        if isinstance(v, float) and v != v:
            return '–'
        return f'{v:.3g}' if isinstance(v, float) and abs(v) < 100 else f'{v:.0f}' if isinstance(v, float) else str(v)
    cols = [' '.join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(df.columns)]
                     + ['| ' + ' | '.join(fmt(v) for v in r) + ' |' for r in df.itertuples(index=False)]) + '\n'


def plots(out, res, gemm_rate):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 6))
    d = res[(res.group == 'models') & (res.dtype == 'fp32')]
    for fam, col in (('hvt', 'tab:red'), ('deit', 'tab:blue'), ('pit', 'tab:green')):
        s = d[d.model.str.startswith(fam)]
        ax.scatter(s.gmacs, s.img_per_s, c=col, label=fam.upper())
        for r in s.itertuples():
            ax.annotate(r.model.replace('_patch16_224', '').replace('_224', '') + (
                f' {r.paper_top1:.1f}%' if r.paper_top1 == r.paper_top1 else ''), (r.gmacs, r.img_per_s), fontsize=7)
    g = pd.Series(sorted(d.gmacs))
    ax.plot(g, gemm_rate / (2e9 * g), 'k--', lw=1, label=f'GEMM-rate ceiling ({gemm_rate / 1e9:.0f} GFLOP/s)')
    ax.set(xscale='log', yscale='log', xlabel='GMACs per image (224x224)', ylabel='images/s (fp32, batch 32, eager)',
           title='Inference speed against cost (labels: paper top-1)')
    ax.grid(True, which='both', alpha=.3), ax.legend(fontsize=8), fig.tight_layout()
    fig.savefig(out / 'throughput_vs_gmacs.png', dpi=100)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    s = res[res.group == 'sweep']
    for col, ax, label in (('img_per_s', axes[0], 'images/s (fp32, eager)'), ('gmacs', axes[1], 'GMACs per image')):
        s.pivot_table(index='img_size', columns='model', values=col).plot(ax=ax, style='-o', logy=col == 'img_per_s')
        ax.set(xlabel='image size (dynamic_img_size)', ylabel=label), ax.grid(True, alpha=.3)
    fig.tight_layout()
    fig.savefig(out / 'throughput_vs_resolution.png', dpi=100)


def main(argv=None, restart=False):
    """Run the benchmark; `restart`: first re-run this script with fixed malloc thresholds (see STEADY_MALLOC)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='batch 2, one round, no compile: checks the pipeline')
    p.add_argument('--out', type=Path, help='results folder (default benchmarks/results[_quick])')
    p.add_argument('--threads', type=int, help='torch threads (default: torch default; --quick: 1)')
    p.add_argument('--models', default=','.join(MODELS), help='comma-separated subset')
    p.add_argument('--rounds', type=int, default=11, help='rounds of the ours-against-authors and training groups')
    p.add_argument('--rounds-other', type=int, default=3, help='rounds of the other groups')
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--default-malloc', action='store_true', help="glibc's adaptive malloc thresholds (noisier)")
    args = p.parse_args(argv)
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    if restart and platform.libc_ver()[0] == 'glibc' and not args.default_malloc and 'glibc.malloc.' not in tunables:
        # glibc's malloc moves its mmap threshold with the allocation history and hands freed memory back, so one
        # batch-32 forward page-faults anywhere from 0 to 60,000 times depending on what ran before; fixed thresholds
        # make timings steadier (benchmarks/README.md). They act only from the interpreter's start: run again with them.
        env = {**os.environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, STEADY_MALLOC]))}
        os.execve(sys.executable, sys.orig_argv, env)  # orig_argv: the interpreter's own flags too
    args.models = [m for m in args.models.split(',') if m]
    args.sizes, args.sweep_batch, B = (224, 288, 384, 448), 8, 32
    if args.quick:
        args.rounds = args.rounds_other = 1
        args.no_compile, args.sizes, args.sweep_batch, B = True, (224, 288), 1, 2
    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))
    out = args.out or ROOT / 'benchmarks' / ('results_quick' if args.quick else 'results')
    out.mkdir(parents=True, exist_ok=True)
    if args.quick and not args.out:  # a scratch folder: keep it out of git
        (out / '.gitignore').write_text('*\n')
    t_start, torch_threads = time.time(), torch.get_num_threads()
    torch.manual_seed(0)
    groups, base, info = plan(args, B)
    from tqdm import tqdm
    bar = tqdm(total=sum(len(cs) * (r + 1) for _, r, cs in groups), unit='call', disable=args.no_progress)
    run(groups, args.quick, bar)
    bar.close()
    tg, ref = targets(groups, B)
    tg = tg.round(3)
    gemm_rate = ref['flop'] / pd.Series(ref['times']).median() if ref else float('nan')
    res = pd.DataFrame([
        dict(group=g, model=c['model'], impl=c['impl'], task=c['task'], mode=c['mode'], dtype=c.get('dtype', 'fp32'),
             batch=c.get('batch'), img_size=c['img_size'], params_m=info.get((c['model'], c['img_size']), [None])[0],
             gmacs=info.get((c['model'], c['img_size']), [None, None])[1],
             paper_gmacs=PAPER.get(c['model'], (None,))[0] if c['img_size'] == 224 else None,
             paper_top1=PAPER.get(c['model'], (None, None))[1] if c['img_size'] == 224 else None,
             img_per_s=c.get('batch', 1) / pd.Series(c['times']).median() if c['times'] else None,
             img_per_s_min=c.get('batch', 1) / max(c['times']) if c['times'] else None,
             img_per_s_max=c.get('batch', 1) / min(c['times']) if c['times'] else None,
             ms=pd.Series(c['times']).median() * 1e3 if c['times'] else None, rounds=len(c['times']),
             peak_mb=c.get('peak_mb'), gflops=c['flop'] / pd.Series(c['times']).median() / 1e9 if c['times'] else None,
             gemm_frac=c['flop'] / pd.Series(c['times']).median() / gemm_rate
             if c['times'] else None, first_call_s=c.get('first_s'), error=c['error'])
        for g, _, cs in groups for c in cs])
    prof = profile([n for n in ('hvt_s_1', 'hvt_ti_1') if n in base], B, ['eager', 'compile'][:2 - args.no_compile])
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
               command='python benchmarks/bench_hvt.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
               cpu=cpu(),
               logical_cpus=os.cpu_count(), torch_threads=torch_threads, torch=torch.__version__, timm=timm.__version__,
               timm_hvt=timm_hvt.__version__, python=platform.python_version(), bf16_native=BF16,
               gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CPU only)',
               malloc=' '.join(f'{k}={os.environ[k]}' for k in ('GLIBC_TUNABLES', 'LD_PRELOAD') if k in os.environ)
               or 'default',
               load_avg=' '.join(f'{v:.1f}' for v in os.getloadavg()), startup_hook_ms=startup_ms(),
               duration_s=round(time.time() - t_start))
    res.to_csv(out / 'results.csv', index=False)
    tg.to_csv(out / 'targets.csv', index=False)
    prof.to_csv(out / 'profile.csv', index=False)
    (out / 'env.json').write_text(json.dumps(env, indent=1) + '\n')
    plots(out, res, gemm_rate)
    ok = res[res.error == '']
    main_t = ok[ok.group == 'models'].pivot_table(index='model', columns='dtype', values=['img_per_s', 'gemm_frac'])
    main_t.columns = [f'{dict(img_per_s="images/s", gemm_frac="GEMM frac")[a]} {d} b{B}' for a, d in main_t.columns]
    main_t = ok[(ok.group == 'models') & (ok.dtype == 'fp32')].set_index('model')[
        ['params_m', 'gmacs', 'paper_gmacs', 'paper_top1', 'peak_mb']].join(main_t).join(
        ok[ok.group == 'batch1'].query('impl == "ours" & mode == "eager" & dtype == "fp32"').set_index('model')
        .ms.rename('ms per image, b1')).reindex([m for m in MODELS if m in base]).reset_index().rename(columns=dict(
            params_m='params (M)', gmacs='GMACs', paper_gmacs='paper GMACs', paper_top1='paper top-1',
            peak_mb=f'peak MB fp32 b{B}'))
    pivot = dict(index=['model', 'mode', 'dtype'], values='ms', aggfunc='first')
    text = [f"# HVT benchmarks\n\n{env['date']}, `{env['command']}` ({env['duration_s']} s) on {env['cpu']}, "
            f"{env['logical_cpus']} logical CPUs, {torch_threads} torch threads, GPU: {env['gpu']}, bf16 native: "
            f"{BF16}; malloc: {env['malloc']}; torch {env['torch']}, timm {env['timm']}, timm-hvt {env['timm_hvt']}, "
            f"Python {env['python']}; load average at the end {env['load_avg']}; start-up hook "
            f"{env['startup_hook_ms']:.1f} ms per interpreter.\n", '## Targets\n', md(tg),
            f'\nfp32 GEMM rate: {gemm_rate / 1e9:.1f} GFLOP/s '
            f"(torch.matmul, best median of {ref['model'] if ref else '-'} and the other GEMM shapes).\n",
            f'## Models, 224x224, batch {B} inference (images/s, medians of {args.rounds_other} rounds)\n', md(main_t),
            '\n![images/s against GMACs](throughput_vs_gmacs.png)\n',
            '## Ours against the authors\' implementation (ms per call)\n',
            md(ok[ok.group.isin(['vs_authors', 'train'])].query('task != "gemm"')
               .pivot_table(columns='impl', **dict(pivot, index=['model', 'task', 'mode'])).reset_index()),
            '\n## GEMM rate (torch.matmul, x @ w.t(); hvt_s_1\'s linears at 97 tokens, and a 2048 square)\n',
            md(ok[ok.task == 'gemm'][['model', 'gflops', 'gemm_frac']].rename(columns={'model': 'M x K x N'})),
            '\n## Batch 1 latency (ms per image)\n', md(ok[ok.group == 'batch1'].pivot_table(
                columns='impl', **pivot).reset_index()),
            f'\n## Cost against resolution (fp32, batch {args.sweep_batch}, dynamic_img_size)\n',
            md(ok[ok.group == 'sweep'].pivot_table(index='model', columns='img_size', values='img_per_s')
               .reset_index()), '\n![cost against resolution](throughput_vs_resolution.png)\n',
            f'## Where the time goes (torch.profiler self time, ms, one forward at batch {B})\n',
            md(prof.assign(cell=[f'{m:.0f} ({s:.0%}), {c}' for m, s, c in zip(prof.ms, prof.share, prof.calls)])
               .pivot_table(index='ops', columns=['model', 'mode', 'impl'], values='cell', aggfunc='first')
               .reset_index()),
            '\nCells: ms (share of the forward), op calls.\n']
    if (res.error != '').any():
        text += ['## Errors\n', md(res[res.error != ''][['group', 'model', 'impl', 'mode', 'error']])]
    (out / 'results.md').write_text('\n'.join(text))
    print(md(tg) + f'done in {env["duration_s"]} s, results in {out}')


if __name__ == '__main__':
    main(restart=True)
