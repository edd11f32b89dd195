"""Turning the timed cases into results.csv, gemm.csv, targets.csv, env.json, results.md and the plots."""
import csv
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import models as bm
from .measure import Case

ROW_COLUMNS = [
    'group', 'model', 'family', 'task', 'img_size', 'batch', 'dtype', 'mode', 'attn', 'params_m', 'gmacs',
    'paper_gmacs', 'paper_top1', 'img_per_s', 'img_per_s_min', 'img_per_s_max', 'ms_per_step', 'samples',
    'peak_mem_mb', 'gemm_frac', 'first_call_s', 'error',
]
GEMM_COLUMNS = ['group', 'dtype', 'shape', 'M', 'K', 'N', 'gflops', 'gflops_min', 'gflops_max', 'samples',
                'reference']
PROFILE_COLUMNS = ['model', 'batch', 'dtype', 'category', 'ms_per_batch', 'share', 'gmacs_per_batch', 'gflops',
                   'frac_of_gemm_rate']
TARGET_COLUMNS = ['target', 'goal', 'measured', 'round_min', 'round_max', 'best', 'met', 'numerator', 'denominator',
                  'ceiling']

# training FLOPs per image: forward + backward (about twice the forward's matmul work)
TRAIN_FLOP_FACTOR = 3


def _r(x: Optional[float], nd: int = 4):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ''
    return round(x, nd)


def gemm_reference(cases: Sequence[Case]) -> Dict[str, float]:
    """Per dtype: the best median FLOP/s torch.matmul reached over the shapes measured."""
    ref: Dict[str, float] = {}
    for c in cases:
        if c.meta['kind'] == 'gemm' and c.samples:
            d = c.meta['dtype']
            ref[d] = max(ref.get(d, 0.0), c.rate())
    return ref


def gemm_rows(cases: Sequence[Case], ref: Dict[str, float]) -> List[dict]:
    rows = []
    for c in cases:
        m = c.meta
        if m['kind'] != 'gemm':
            continue
        rate = c.rate()
        rows.append(dict(group=m['group'], dtype=m['dtype'], shape=m['shape'], M=m['M'], K=m['K'], N=m['N'],
                         gflops=_r(rate / 1e9, 1), gflops_min=_r(c.rate_min / 1e9, 1),
                         gflops_max=_r(c.rate_max / 1e9, 1), samples=len(c.samples),
                         reference=bool(c.samples) and rate == ref.get(m['dtype'])))
    return rows


def model_rows(cases: Sequence[Case], info: Dict[tuple, dict], ref: Dict[str, float]) -> List[dict]:
    rows = []
    for c in cases:
        m = c.meta
        if m['kind'] != 'model':
            continue
        name = m['model']
        paper = bm.paper_ref(name)
        inf = info.get((name, m['img_size']), {})
        gmacs = inf.get('gmacs')
        ips = c.rate()
        frac = float('nan')
        if gmacs and ref.get(m['dtype']) and not math.isnan(ips):
            factor = TRAIN_FLOP_FACTOR if m['task'] == 'train' else 1
            frac = 2 * gmacs * 1e9 * factor * ips / ref[m['dtype']]
        rows.append(dict(
            group=m['group'], model=name, family=bm.family(name), task=m['task'], img_size=m['img_size'],
            batch=m['batch'], dtype=m['dtype'], mode=m['mode'], attn=m['attn'],
            params_m=_r(inf.get('params_m'), 3), gmacs=_r(gmacs, 3),
            paper_gmacs=_r(paper.gmacs, 2) if m['img_size'] == 224 else '',
            paper_top1=_r(paper.top1, 2) if m['img_size'] == 224 else '',
            img_per_s=_r(ips, 3), img_per_s_min=_r(c.rate_min, 3), img_per_s_max=_r(c.rate_max, 3),
            ms_per_step=_r(statistics.median(c.samples) * 1e3, 2) if c.samples else '',
            samples=len(c.samples),
            peak_mem_mb=_r(c.peak_bytes / 2 ** 20, 1) if c.peak_bytes is not None else '',
            gemm_frac=_r(frac, 3), first_call_s=_r(c.first_call_s, 2), error=c.error or '',
        ))
    return rows


def _find(cases: Sequence[Case], **want) -> Optional[Case]:
    for c in cases:
        if c.meta['kind'] == 'model' and all(c.meta.get(k) == v for k, v in want.items()):
            return c
    return None


def _paired(a: Case, b: Case) -> Tuple[float, float, float]:
    """Throughput ratio a/b: of the medians, and the lowest and highest of the per-round ratios."""
    ratio = a.rate() / b.rate()
    per_round = [tb / ta for ta, tb in zip(a.samples, b.samples)]
    return ratio, min(per_round), max(per_round)


def gemm_ceiling(cases: Sequence[Case], shapes: Sequence[Tuple[int, int, int]], gmacs: float, batch: int,
                 ref: float) -> Optional[float]:
    """The GEMM fraction a model would reach if each of its linear layers ran at the rate torch.matmul reaches
    alone on that shape (the measured GEMM cases; the reference rate for a shape not measured) and nothing else
    took any time: an upper bound on what it can reach."""
    rates = {(c.meta['M'], c.meta['K'], c.meta['N']): c.rate() for c in cases
             if c.meta['kind'] == 'gemm' and c.meta['dtype'] == 'fp32' and c.samples}
    if not shapes or not ref:
        return None
    linear_s = sum(2.0 * m * k * n / rates.get((m, k, n), ref) for m, k, n in shapes)
    return 2 * gmacs * 1e9 * batch / linear_s / ref


def targets(cases: Sequence[Case], info: Dict[tuple, dict], ref: Dict[str, float], batch: int) -> List[dict]:
    """The goals of issue #5, measured in the fp32 batch-`batch` groups."""
    out = []
    g_inf, g_train = f'infer_b{batch}_fp32', f'train_b{batch}'

    def not_measured(label, goal):
        out.append(dict(target=label, goal=goal, measured='', round_min='', round_max='', met='not measured',
                        numerator='', denominator=''))

    def ratio_target(label, goal, a, b):
        if a is None or b is None or not a.samples or not b.samples:
            return not_measured(label, goal)
        r, lo, hi = _paired(a, b)
        out.append(dict(target=label, goal=goal, measured=_r(r, 3), round_min=_r(lo, 3), round_max=_r(hi, 3),
                        best=_r(a.rate_max / b.rate_max, 3),
                        met='yes' if r >= goal else 'no', numerator=_r(a.rate(), 3), denominator=_r(b.rate(), 3)))

    base = dict(group=g_inf, mode='eager', dtype='fp32', task='infer', img_size=224)
    # the goals: about the paper's MAC ratios, 4.60 / 1.39 and 1.25 / 0.64
    for hvt, deit, goal in (('hvt_s_4', 'deit_small_patch16_224', 3.3), ('hvt_ti_1', 'deit_tiny_patch16_224', 1.9)):
        ratio_target(f'{hvt} / {deit} images/s (fp32 b{batch} inference)', goal,
                     _find(cases, model=hvt, attn='fused', **base), _find(cases, model=deit, attn='fused', **base))
    for n in bm.TARGET_HVT:
        ratio_target(f'{n} fused / unfused attention (fp32 b{batch} inference)', 1.05,
                     _find(cases, model=n, attn='fused', **base), _find(cases, model=n, attn='unfused', **base))
    for n in bm.TARGET_HVT:
        tb = dict(group=g_train, dtype='fp32', task='train')
        ratio_target(f'{n} fused / unfused attention (fp32 b{batch} training step)', 1.0,
                     _find(cases, model=n, attn='fused', **tb), _find(cases, model=n, attn='unfused', **tb))
    model_info = info.get(('hvt_s_1', 224), {})
    for mode, goal in (('eager', 0.80), ('compile', 0.90)):
        label = f'hvt_s_1 {mode} fraction of fp32 GEMM rate (b{batch} inference)'
        c = _find(cases, model='hvt_s_1', attn='fused', **dict(base, mode=mode))
        gm = model_info.get('gmacs')
        if c is None or not c.samples or not gm or 'fp32' not in ref:
            not_measured(label, goal)
            continue
        flop = 2 * gm * 1e9  # per image
        best_gemm = max(g.rate_max for g in cases if g.meta['kind'] == 'gemm' and g.meta['dtype'] == 'fp32'
                        and g.samples)
        out.append(dict(
            target=label, goal=goal, measured=_r(flop * c.rate() / ref['fp32'], 3),
            round_min=_r(flop * c.rate_min / ref['fp32'], 3), round_max=_r(flop * c.rate_max / ref['fp32'], 3),
            best=_r(flop * c.rate_max / best_gemm, 3), met='yes' if flop * c.rate() / ref['fp32'] >= goal else 'no',
            numerator=f'{flop * c.rate() / 1e9:.1f} GFLOP/s', denominator=f"{ref['fp32'] / 1e9:.1f} GFLOP/s",
            ceiling=_r(gemm_ceiling(cases, model_info.get('linear_shapes', ()), gm, batch, ref['fp32']), 3)))
    return out


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> Path:
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, '') for k in columns})
    return path


def _fmt(v, nd=1) -> str:
    if v == '' or v is None:
        return '–'
    if isinstance(v, float):
        if v >= 100:
            return f'{v:.0f}'
        if v >= 10:
            return f'{v:.1f}'
        return f'{v:.{max(nd, 2)}f}'
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(_fmt(c) for c in r) + ' |' for r in rows]
    return lines


def _pick(rows: Sequence[dict], **want) -> Optional[dict]:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _val(rows, key='img_per_s', **want):
    r = _pick(rows, **want)
    if r is None:
        return ''
    if r['error']:
        return 'error'
    return r[key]


def markdown(rows: List[dict], grows: List[dict], trows: List[dict], env: Dict[str, str], plan: dict,
             ref: Dict[str, float], plots: Sequence[Path], prows: Sequence[dict] = ()) -> str:
    B = plan['batch']
    known = {n: i for i, n in enumerate(bm.ALL_MODELS)}  # tables list the models in this order, not as timed
    models = sorted(dict.fromkeys(r['model'] for r in rows if r['img_size'] == 224),
                    key=lambda n: known.get(n, len(known)))
    L = ['# HVT benchmarks', '',
         f"- date: {env['date']}; run took {env.get('duration_s', '?')} s",
         f"- hardware: {env['hardware']}",
         f"- load average (1/5/15 min) at start: {env['load_avg_start']}, at end: {env.get('load_avg_end', '?')}",
         f"- command: `{env['command']}`",
         '- groups (duration, load): ' + '; '.join(f'{g}: {v}' for g, v in env.get('group_load', {}).items()),
         f"- images/s are medians of interleaved rounds (fp32 batch {B} inference: {plan['rounds']} rounds, "
         f"other groups {plan['rounds_other']}, training batch {B}: {plan['rounds_train']}), each after a warm-up "
         f"call; batch-1 samples span at least {plan['min_sample_s']} s. Eager unless marked compile; "
         "bf16 = torch.autocast. Training step = forward + cross-entropy + backward + AdamW step.",
         '- GMACs: timm_hvt.flops.count_gmacs (both attention matmuls counted, as the HVT paper counts); '
         'paper columns: HVT and DeiT from the HVT paper, PiT from the PiT paper.',
         '- peak MB: the most tensor memory alive during one step (weights, inputs, activations; for training also '
         'gradients and AdamW state), tracked op by op in the eager warm-up call.',
         f"- GEMM frac: achieved FLOP/s (2 x GMACs x images/s, x{TRAIN_FLOP_FACTOR} for a training step) over the "
         "device's GEMM rate for that dtype: the best median torch.matmul rate of the shapes in the GEMM table.",
         '']
    if plan.get('quick_init'):
        L += ['**--quick run: tiny batches, one round, quick weight init; numbers check the pipeline, not speed.**',
              '']

    L += ['## Targets (issue #5)', '']
    L += _table(['target', 'goal', 'measured (medians)', 'per-round range', 'best rounds', 'met', 'numbers'],
                [[t['target'], f">= {t['goal']}", t['measured'],
                  f"{_fmt(t['round_min'])} – {_fmt(t['round_max'])}" if t['round_min'] != '' else '–',
                  t.get('best', ''), t['met'],
                  f"{t['numerator']} / {t['denominator']}" if t['numerator'] != '' else '–']
                 for t in trows])
    L += ['', '"measured" (which decides "met") is the ratio of the medians; "per-round range" the lowest and '
              'highest ratio within one round; "best rounds" the ratio of each side\'s fastest round (for the GEMM '
              "fraction: the model's fastest round over the fastest GEMM round), the least disturbed by other load.",
          '']
    for t in trows:
        if t.get('ceiling') not in (None, ''):
            L += [f"Ceiling of \"{t['target']}\": {_fmt(t['ceiling'], 2)}, the fraction hvt_s_1 would reach if each "
                  'of its linear layers ran at the rate torch.matmul reaches alone on that shape (GEMM table) and '
                  'attention, conv, norms, activations, adds and copies took no time.', '']
    L.append('')

    L += ['## Inference, 224x224, images/s', '']
    hdr = ['model', 'params (M)', 'GMACs', 'paper GMACs', 'paper top-1', 'fp32 b1', f'fp32 b{B}', 'bf16 b1',
           f'bf16 b{B}', f'compile fp32 b{B}', f'compile bf16 b{B}', f'peak MB fp32 b{B}', f'GEMM frac fp32 b{B}',
           f'GEMM frac bf16 b{B}']
    body = []
    for n in models:
        any_row = _pick(rows, model=n, img_size=224)
        base = _pick(rows, model=n, img_size=224, task='infer', batch=B, dtype='fp32', mode='eager',
                     attn='fused') or dict(img_per_s='', error='', peak_mem_mb='', gemm_frac='')
        body.append([
            n, any_row['params_m'], any_row['gmacs'], any_row['paper_gmacs'], any_row['paper_top1'],
            _val(rows, group='infer_b1', model=n, dtype='fp32'),
            base['img_per_s'] if not base['error'] else 'error',
            _val(rows, group='infer_b1', model=n, dtype='bf16'),
            _val(rows, group=f'infer_b{B}_bf16', model=n, mode='eager'),
            _val(rows, group=f'infer_b{B}_fp32', model=n, mode='compile'),
            _val(rows, group=f'infer_b{B}_bf16', model=n, mode='compile'),
            base['peak_mem_mb'], base['gemm_frac'],
            _val(rows, 'gemm_frac', group=f'infer_b{B}_bf16', model=n, mode='eager'),
        ])
    L += _table(hdr, body)
    comp = [r for r in rows if r['mode'] == 'compile']
    if comp:
        L += ['', 'torch.compile (default inductor, dynamic=False) first call, compilation included: ' +
              ', '.join(f"{r['model']} {r['dtype']} {_fmt(r['first_call_s'])} s" for r in comp) + '.']
    L.append('')

    L += ['## Training step (AdamW), 224x224, images/s', '']
    hdr = ['model', 'fp32 b1', f'fp32 b{B}', 'bf16 b1', f'bf16 b{B}', f'peak MB fp32 b{B}', f'peak MB bf16 b{B}',
           f'GEMM frac fp32 b{B}']
    body = []
    for n in models:
        r32 = _pick(rows, group=f'train_b{B}', model=n, dtype='fp32', attn='fused') or {}
        body.append([
            n, _val(rows, group='train_b1', model=n, dtype='fp32'), r32.get('img_per_s', ''),
            _val(rows, group='train_b1', model=n, dtype='bf16'),
            _val(rows, group=f'train_b{B}', model=n, dtype='bf16'),
            r32.get('peak_mem_mb', ''), _val(rows, 'peak_mem_mb', group=f'train_b{B}', model=n, dtype='bf16'),
            r32.get('gemm_frac', ''),
        ])
    L += _table(hdr, body)
    L.append('')

    L += [f'## Fused attention (F.scaled_dot_product_attention) against the explicit softmax(q k^T) v, fp32 '
          f'batch {B}', '']
    body = []
    for n in plan['unfused_models']:
        for task, g in (('inference', f'infer_b{B}_fp32'), ('training step', f'train_b{B}')):
            f = _pick(rows, group=g, model=n, dtype='fp32', attn='fused', mode='eager')
            u = _pick(rows, group=g, model=n, dtype='fp32', attn='unfused', mode='eager')
            if f and u and f['img_per_s'] != '' and u['img_per_s'] != '':
                body.append([n, task, f['img_per_s'], u['img_per_s'], round(f['img_per_s'] / u['img_per_s'], 3)])
    L += _table(['model', 'task', 'fused images/s', 'unfused images/s', 'fused / unfused'], body)
    L.append('')

    sweep = [r for r in rows if r['group'].startswith('sweep')]
    if sweep:
        sizes = sorted({r['img_size'] for r in sweep})
        sb = sweep[0]['batch']
        L += [f'## Resolution sweep: fp32 inference, batch {sb}, dynamic_img_size (images/s, GMACs)', '',
              "timm's PiT has no dynamic_img_size, so PiT is not swept.", '']
        body = []
        for n in dict.fromkeys(r['model'] for r in sweep):
            body.append([n] + [f"{_fmt(_val(sweep, model=n, img_size=s))} "
                               f"({_fmt(_val(sweep, 'gmacs', model=n, img_size=s))})" for s in sizes])
        for hvt, deit in (('hvt_s_4', 'deit_small_patch16_224'), ('hvt_s_1', 'deit_small_patch16_224'),
                          ('hvt_ti_1', 'deit_tiny_patch16_224')):
            cells = []
            for s in sizes:
                a, b = _val(sweep, model=hvt, img_size=s), _val(sweep, model=deit, img_size=s)
                ga, gb = _val(sweep, 'gmacs', model=hvt, img_size=s), _val(sweep, 'gmacs', model=deit, img_size=s)
                ok = all(isinstance(v, float) and v > 0 for v in (a, b, ga, gb))
                cells.append(f'{a / b:.2f}x (MACs {gb / ga:.2f}x)' if ok else '–')
            if any(c != '–' for c in cells):
                body.append([f'{hvt} / {deit.split("_patch")[0]}'] + cells)
        L += _table(['model'] + [str(s) for s in sizes], body)
        L.append('')

    L += ['## GEMM rate (torch.matmul, x @ w.t() as in nn.Linear, no bias)', '']
    L += _table(['dtype', 'shape (M x K x N)', 'GFLOP/s median', 'min – max', 'reference'],
                [[g['dtype'], f"{g['shape']} ({g['M']}x{g['K']}x{g['N']})", g['gflops'],
                  f"{_fmt(g['gflops_min'])} – {_fmt(g['gflops_max'])}", 'yes' if g['reference'] else '']
                 for g in grows])
    L += ['', 'Reference rates: ' + ', '.join(f'{d} {v / 1e9:.1f} GFLOP/s' for d, v in ref.items()) + '.', '']

    if prows:
        L += ['## Where the time goes', ''] + _profile_md(list(prows), ref)

    errs = [r for r in rows if r['error']]
    if errs:
        L += ['## Errors', ''] + [f"- {r['model']} {r['task']} {r['dtype']} b{r['batch']} {r['mode']}: {r['error']}"
                                  for r in errs] + ['']
    if plots:
        L += ['## Plots', ''] + [f'![{p.stem}]({p.name})' for p in plots] + ['']
    return '\n'.join(L)


def plots(out: Path, rows: List[dict], ref: Dict[str, float], batch: int) -> List[Path]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    colors = {'hvt': 'tab:red', 'deit': 'tab:blue', 'pit': 'tab:green'}
    plain = FuncFormatter(lambda v, _: f'{v:g}')
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, dtype in zip(axes, ('fp32', 'bf16')):
        sel = [r for r in rows if r['group'] == f'infer_b{batch}_{dtype}' and r['mode'] == 'eager'
               and r['attn'] == 'fused' and r['img_per_s'] != '']
        for fam, col in colors.items():
            pts = [r for r in sel if r['family'] == fam]
            ax.scatter([r['gmacs'] for r in pts], [r['img_per_s'] for r in pts], c=col, label=fam.upper(), s=40)
        placed = []  # (log x, log y) of the labels so far: a point close to one gets its label below instead
        for r in sorted(sel, key=lambda r: (r['gmacs'], -r['img_per_s'])):
            top1 = f" {r['paper_top1']:.1f}%" if r['paper_top1'] != '' else ''
            here = (math.log(r['gmacs']), math.log(r['img_per_s']))
            crowded = any(abs(here[0] - x) < 0.25 and abs(here[1] - y) < 0.06 for x, y in placed)
            placed.append(here)
            ax.annotate(r['model'].replace('_patch16_224', '').replace('_224', '') + top1,
                        (r['gmacs'], r['img_per_s']), textcoords='offset points', xytext=(4, -9 if crowded else 3),
                        fontsize=7)
        if dtype in ref and sel:
            xs = sorted(r['gmacs'] for r in sel)
            xs = [xs[0] * 0.9, xs[-1] * 1.1]
            ax.plot(xs, [ref[dtype] / (2 * x * 1e9) for x in xs], 'k--', lw=1,
                    label=f'GEMM rate ceiling ({ref[dtype] / 1e9:.0f} GFLOP/s)')
        if sel:
            ax.set_xscale('log')
            ax.set_yscale('log')
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(plain)
            ax.tick_params(which='minor', labelsize=7)
        else:
            ax.text(.5, .5, 'not measured in this run', ha='center', transform=ax.transAxes)
        ax.set_xlabel('GMACs per image (224x224)')
        ax.set_ylabel(f'images/s ({dtype}, batch {batch}, eager)')
        ax.set_title(f'Inference speed against cost, {dtype} (labels: paper top-1)')
        ax.grid(True, which='both', alpha=.3)
        if sel:
            ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / 'throughput_vs_gmacs.png'
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)

    sweep = [r for r in rows if r['group'].startswith('sweep') and r['img_per_s'] != '']
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = ['-o', '-s', '-^', '-D', '-v', '-x']
    for i, n in enumerate(dict.fromkeys(r['model'] for r in sweep)):
        pts = sorted((r for r in sweep if r['model'] == n), key=lambda r: r['img_size'])
        col = colors.get(bm.family(n), 'k')
        label = n.replace('_patch16_224', '')
        axes[0].plot([r['img_size'] for r in pts], [r['img_per_s'] for r in pts], styles[i % len(styles)], c=col,
                     label=label)
        axes[1].plot([r['img_size'] for r in pts], [r['gmacs'] for r in pts], styles[i % len(styles)], c=col,
                     label=label)
    sb = sweep[0]['batch'] if sweep else '?'
    axes[0].set_ylabel(f'images/s (fp32, batch {sb}, eager)')
    if sweep:
        axes[0].set_yscale('log')
        axes[0].yaxis.set_major_formatter(plain)
        axes[0].yaxis.set_minor_formatter(plain)
        axes[0].tick_params(which='minor', labelsize=7)
        for ax in axes:
            ax.set_xticks(sorted({r['img_size'] for r in sweep}))
    else:
        for ax in axes:
            ax.text(.5, .5, 'not measured in this run', ha='center', transform=ax.transAxes)
    axes[1].set_ylabel('GMACs per image')
    for ax in axes:
        ax.set_xlabel('image size (dynamic_img_size)')
        ax.grid(True, alpha=.3)
        if sweep:
            ax.legend(fontsize=8)
    axes[0].set_title('Inference speed against resolution')
    axes[1].set_title('Cost against resolution')
    fig.tight_layout()
    p = out / 'throughput_vs_resolution.png'
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)
    return written


def profile_rows(prof: Sequence[dict], ref: Dict[str, float]) -> List[dict]:
    rows = []
    for r in prof:
        g = r.get('gflops')
        rows.append(dict(r, ms_per_batch=_r(r['ms_per_batch'], 1), share=_r(r['share'], 3),
                         gmacs_per_batch=_r(r['gmacs_per_batch'], 3), gflops=_r(g, 1) if g else '',
                         frac_of_gemm_rate=_r(g * 1e9 / ref[r['dtype']], 3) if g and ref.get(r['dtype']) else ''))
    return rows


def _profile_md(prows: List[dict], ref: Dict[str, float]) -> List[str]:
    L = []
    for model in dict.fromkeys(r['model'] for r in prows):
        rs = [r for r in prows if r['model'] == model]
        b, dt = rs[0]['batch'], rs[0]['dtype']
        L += [f'### {model}, eager {dt} inference, batch {b} (torch.profiler self time, one profiled run)', '']
        L += _table(['ops', 'ms / batch', 'share of time', 'GMACs / batch', 'GFLOP/s', 'of GEMM rate'],
                    [[r['category'], r['ms_per_batch'], r['share'], r['gmacs_per_batch'] or '', r['gflops'],
                      r['frac_of_gemm_rate']] for r in rs if r['ms_per_batch'] != 0])
        tot = next((r for r in rs if r['category'] == 'total'), None)
        lin = next((r for r in rs if r['category'].startswith('linear')), None)
        if tot and lin and ref.get(dt) and lin['gmacs_per_batch'] and tot['frac_of_gemm_rate'] != '':
            rest_ms = tot['ms_per_batch'] - lin['ms_per_batch']
            ideal_lin_ms = 2 * lin['gmacs_per_batch'] * 1e9 / ref[dt] * 1e3
            ceiling = 2 * tot['gmacs_per_batch'] * 1e9 / ref[dt] / ((ideal_lin_ms + rest_ms) / 1e3)
            L += ['', f"Everything but the linear layers takes {rest_ms:.0f} ms of {tot['ms_per_batch']:.0f} ms "
                      f"({rest_ms / tot['ms_per_batch']:.0%}). Were the linear layers to run at the full GEMM rate "
                      f"({ref[dt] / 1e9:.1f} GFLOP/s) with the rest unchanged, the model would reach "
                      f"{ceiling:.0%} of that rate; it reaches {tot['frac_of_gemm_rate']:.0%} here."]
        L.append('')
    return L


def write_all(out: Path, cases: Sequence[Case], info: Dict[tuple, dict], env: Dict[str, str], plan: dict,
              prof: Sequence[dict] = (), with_plots: bool = True) -> List[Path]:
    """Write every output; with_plots=False (the checkpoints written after each group) leaves the PNGs out."""
    ref = gemm_reference(cases)
    prows = profile_rows(prof, ref)
    rows = model_rows(cases, info, ref)
    grows = gemm_rows(cases, ref)
    trows = targets(cases, info, ref, plan['batch'])
    files = [
        _write_csv(out / 'results.csv', ROW_COLUMNS, rows),
        _write_csv(out / 'gemm.csv', GEMM_COLUMNS, grows),
        _write_csv(out / 'targets.csv', TARGET_COLUMNS, trows),
        _write_csv(out / 'profile.csv', PROFILE_COLUMNS, prows),
    ]
    env_path = out / 'env.json'
    env_path.write_text(json.dumps(dict(env, plan=plan, gemm_reference_gflops={k: v / 1e9 for k, v in ref.items()}),
                                   indent=2) + '\n')
    files.append(env_path)
    pngs = []
    if with_plots:
        try:
            pngs = plots(out, rows, ref, plan['batch'])
        except ImportError as e:  # matplotlib missing: everything else is still written
            print(f'no plots: {e}')
    files += pngs
    md = out / 'results.md'
    md.write_text(markdown(rows, grows, trows, env, plan, ref, pngs, prows) + '\n')
    files.append(md)
    return files
