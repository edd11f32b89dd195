"""CPU routes for HVT, the authors' code, DeiT-S and PiT-S: time per batch, and what inexact routes cost in accuracy.

    python -m benchmarks.bench_cpu           # 2 threads, batch 8, 5 rounds: benchmarks/results/cpu_*
    python -m benchmarks.bench_cpu --quick   # 1 thread, batch 1, one round, no compile: checks the pipeline

Each round times every case once, the first case rotating, so load from elsewhere falls on all cases alike. A time is
the median of the rounds; a ratio, of two medians, with its lowest and highest within one round. Weights are random.
"""
import argparse, copy, datetime, functools, os, platform, sys, tempfile, time, timeit  # noqa: E401
from pathlib import Path

os.environ['HF_HUB_OFFLINE'] = '1'  # pretrained weights only from the local caches: the run never downloads
if __name__ == '__main__':
    from benchmarks import restart_with_steady_malloc
    restart_with_steady_malloc()

import numpy as np
import pandas as pd
import torch

import timm
import timm_hvt
from timm_hvt.flops import count_gmacs

from benchmarks import authors_hvt
from benchmarks.digits import export_digits

MODELS = ['hvt_ti_1', 'hvt_s_4', 'deit_small_patch16_224', 'pit_s_224']
EXACT = 'OpenVINO f32'  # the route README.md documents
ROUTES = ['torch eager fp32', 'torch.compile', 'torch bf16 autocast', 'ONNX Runtime fp32', EXACT,
          'OpenVINO default precision', 'OpenVINO INT8 (NNCF), head fp32, no SmoothQuant', 'torch training step fp32']
INT8_MORE = ['OpenVINO INT8 (NNCF), every layer', 'OpenVINO INT8 (NNCF), head fp32',  # accuracy only: NNCF's
             'OpenVINO INT8 (NNCF), every layer, no SmoothQuant']  # transformer defaults, each half of the recipe
DIGITS = dict(embed_dim=64, num_heads=2, depth=4, patch_size=8, img_size=32, num_classes=10)  # tests/test_digits.py
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry')  # scikit-image's bundled photos
_OV = {}  # model -> its OpenVINO model
md = functools.partial(pd.DataFrame.to_markdown, index=False, floatfmt='.3g')


def build(route: str, model: torch.nn.Module, x: torch.Tensor, calib: list, threads: int, tmp: str):
    """`model` along `route`: a callable from images to logits (a training step returns nothing)."""
    if route == 'torch training step fp32':
        trainee, y = copy.deepcopy(model).train().requires_grad_(True), torch.arange(len(x)) % model.num_classes
        return lambda x: (torch.nn.functional.cross_entropy(trainee(x), y[:len(x)]).backward(), trainee.zero_grad())[-1]
    if route.startswith('torch'):
        fn = torch.compile(model, dynamic=False) if route == 'torch.compile' else model

        def infer(x):
            with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16, enabled='bf16' in route):
                return fn(x).float()
        return infer
    if route == 'ONNX Runtime fp32':
        import onnxruntime as ort
        path = f'{tmp}/{len(os.listdir(tmp))}.onnx'
        torch.onnx.export(model, (x,), path, dynamic_shapes=({0: torch.export.Dim.AUTO},), verbose=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
        return lambda x: torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    import openvino as ov
    if model not in _OV:  # one conversion per model for the OpenVINO routes, any batch
        _OV[model] = ov.convert_model(model, example_input=x[:1], input=[-1, *x.shape[1:]])
    ov_model, config = _OV[model], dict(INFERENCE_NUM_THREADS=threads, PERFORMANCE_HINT='LATENCY')
    if route != 'OpenVINO default precision':  # INT8: what is not quantized runs in f32
        config['INFERENCE_PRECISION_HINT'] = 'f32'
    if 'INT8' in route:
        import nncf
        matmuls = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == 'MatMul']
        ov_model = nncf.quantize(  # the last MatMul is the classifier
            ov_model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
            ignored_scope=nncf.IgnoredScope(names=matmuls[-1:] if 'head' in route else []), advanced_parameters=nncf.
            AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1))
            if 'no SmoothQuant' in route else None)
    compiled = ov.Core().compile_model(ov_model, 'CPU', config)
    return lambda x: torch.from_numpy(compiled(x.numpy())[0])


def cpu_peak(threads: int):
    """The CPU's name, its fp32 peak in GFLOP/s and how that was derived: the best rate of an in-cache fp32 matrix
    product on `threads` threads. /proc/cpuinfo gives only the base clock, which turbo exceeds."""
    text = Path('/proc/cpuinfo').read_text() if os.path.exists('/proc/cpuinfo') else ''
    info = dict(map(str.strip, ln.split(':', 1)) for ln in text.split('\n\n')[0].splitlines() if ':' in ln)
    flags, ghz, a = info.get('flags', '').split(), float(info.get('cpu MHz', 'nan')) / 1e3, torch.randn(512, 512)
    lanes = 16 if 'avx512f' in flags and info.get('cpu family') != '25' else 8  # AMD family 25: 256-bit FMA datapath
    best = min(timeit.repeat(lambda: torch.mm(a, a), number=1, repeat=200))
    how = (f'the best of 200 fp32 512x512 matrix products (torch.mm); nominal at the {ghz:.2f} GHz base clock of '
           f'/proc/cpuinfo: {lanes} fp32 lanes x 2 FMA units (assumed) x 2 flop x {threads} thread(s) = '
           f'{lanes * 4 * ghz * threads:.0f} GFLOP/s')
    return (f"{info.get('model name', platform.machine())} (family {info.get('cpu family')} model {info.get('model')}"
            f"; {' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_tile') if f in flags)})",
            2 * 512 ** 3 / best / 1e9, how)


def time_rounds(cases: list, x: torch.Tensor, rounds: int, min_s: float) -> None:
    for c in cases:
        try:
            c['fn'] = build(*c['build'])
            c['out'], t0 = c['fn'](x), time.perf_counter()  # the first call compiles, allocates
            c['fn'](x)
            c['inner'] = max(1, round(min_s / (time.perf_counter() - t0)))
        except Exception as e:  # the row reports the error; the run goes on
            c['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:160]
        print(f"{time.strftime('%H:%M:%S')} ready: {c['model']}, {c['route']} {c.get('error', '')}", flush=True)
    live = [c for c in cases if 'fn' in c]
    for r in range(rounds):
        for c in live[r % len(live):] + live[:r % len(live)]:
            t0 = time.perf_counter()
            for _ in range(c['inner']):
                c['fn'](x)
            c['times'].append((time.perf_counter() - t0) / c['inner'])


def ratio(a, b) -> tuple:
    """a's speed-up over b: the ratio of the medians, the lowest and highest ratio within one round."""
    if not (a and b and a['times'] and b['times']):
        return float('nan'), ''
    r = [tb / ta for ta, tb in zip(a['times'], b['times'])]
    return np.median(b['times']) / np.median(a['times']), f'{min(r):.2f}-{max(r):.2f}'


def accuracy(model, x, labels, calib, routes, threads, tmp, name) -> list:
    """Each inference route's logits against eager fp32's on `x`, and top-1 against `labels` where given."""
    ref, rows = build(ROUTES[0], model, x, calib, threads, tmp)(x), []
    for route in [r for r in routes if 'train' not in r][1:] + INT8_MORE:
        out = build(route, model, x, calib, threads, tmp)(x)
        top1 = {} if labels is None else dict(top1=float((out.argmax(1) == labels).float().mean()),
                                               top1_fp32=float((ref.argmax(1) == labels).float().mean()))
        rows.append(dict(model=name, route=route, **top1, rel_logit_err=float((out - ref).norm() / ref.norm()),
                         max_abs_logit_diff=float((out - ref).abs().max()),
                         top1_agrees_with_fp32=float((out.argmax(1) == ref.argmax(1)).float().mean())))
    return rows


def train_digits(root: str, epochs: int, limit):
    """The digits HVT from timm's pieces: the model, held-out images and labels, up to 300 calibration images."""
    from timm import loss, optim, scheduler
    from timm.data import ImageDataset, create_transform
    export_digits(root, img_size=32, val_fraction=0.2, seed=0, limit=limit)
    timm.utils.random_seed(0)  # torch's, numpy's and Python's (the crops)
    model = timm.create_model('hvt_ti_2', **DIGITS)
    train = ImageDataset(f'{root}/train', transform=create_transform(
        32, is_training=True, scale=(0.8, 1.), hflip=0., color_jitter=0.))
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, drop_last=True)
    opt = optim.create_optimizer_v2(model, 'adamw', lr=2e-3, weight_decay=0.05)
    sched, _ = scheduler.create_scheduler_v2(opt, 'cosine', num_epochs=epochs, warmup_epochs=1, step_on_epochs=False,
                                             updates_per_epoch=len(loader))
    loss_fn, step = loss.LabelSmoothingCrossEntropy(0.1), 0
    for _ in range(epochs):
        for x, y in loader:
            loss_fn(model(x), y).backward()
            opt.step(), opt.zero_grad(), sched.step_update(step := step + 1)
    plain = create_transform(32, crop_pct=1.)
    held_out, train_plain = (ImageDataset(f'{root}/{s}', transform=plain) for s in ('val', 'train'))
    x, y = map(torch.stack, zip(*[(img, torch.tensor(t)) for img, t in held_out]))
    calib = [train_plain[i][0][None].numpy() for i in range(min(300, len(train)))]
    return model.eval().requires_grad_(False), x, y, calib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='1 thread, batch 1, one round, no compile, a short training')
    p.add_argument('--models', default=','.join(MODELS), help="comma-separated; hvt_* run as the authors' code too")
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--threads', type=int, default=2, help='threads of every route')
    p.add_argument('--out', type=Path, help='results folder (default benchmarks/results, --quick: results_quick)')
    args = p.parse_args()
    t_start, batch, threads, epochs = time.time(), *((1, 1, 1) if args.quick else (8, args.threads, 8))
    rounds, routes = (1, [r for r in ROUTES if r != 'torch.compile']) if args.quick else (args.rounds, ROUTES)
    torch.set_num_threads(threads)
    out = args.out or Path(__file__).resolve().parent / ('results_quick' if args.quick else 'results')
    out.mkdir(parents=True, exist_ok=True)
    (cpu, peak, how), tmp, _ = cpu_peak(threads), tempfile.mkdtemp(), torch.manual_seed(0)
    x, calib = torch.randn(batch, 3, 224, 224), [torch.randn(1, 3, 224, 224).numpy() for _ in range(16)]
    models = {}
    for n in args.models.split(','):
        models[n] = timm.create_model(n).eval().requires_grad_(False)
        if n in authors_hvt.VARIANTS:  # ours with the weights the authors' code gets too
            models[f'authors_{n}'] = timm.create_model(f'authors_{n}').eval().requires_grad_(False)
            models[n].load_state_dict(authors_hvt.random_state_dict(n))
    gmacs = {n: count_gmacs(m) for n, m in models.items()}
    cases = [dict(model=n, route=r, build=(r, m, x, calib, threads, tmp), times=[]) for r in routes
             for n, m in models.items()]
    time_rounds(cases, x, rounds, 0.05 if args.quick else 0.3)
    find, deit, rows = {(c['model'], c['route']): c for c in cases}, next((n for n in models if 'deit' in n), None), []
    for c in cases:
        n, r, t, eager, train = c['model'], c['route'], c['times'], find[c['model'], ROUTES[0]], 'train' in c['route']
        row = dict(model=n, route=r, ms=np.median(t) * 1e3 if t else np.nan)
        for key, other in (('vs_eager', None if train else eager), ('vs_deit_s', find.get((deit, r))),
                           ('vs_authors', find.get((f'authors_{n}', r)))):
            row[key], row[f'{key}_rounds'] = ratio(c, other)
        row['gflops'] = 2 * gmacs[n] * batch * (3 if train else 1) / np.median(t) if t else np.nan
        rows.append(dict(row, peak_frac=row['gflops'] / peak, rel_logit_diff_random_weights=(c['out'] - eager['out'])
                         .abs().max().item() / eager['out'].abs().max().item() if 'out' in c and not train else np.nan,
                         error=c.get('error', '')))
    (speed := pd.DataFrame(rows)).to_csv(out / 'cpu_routes.csv', index=False)

    torch.set_num_threads(1)  # a tiny model trains faster on one thread, above all on a busy machine
    model, dx, dy, dcalib = train_digits(f'{tmp}/digits', epochs, 64 if args.quick else None)
    acc = accuracy(model, dx, dy, dcalib, routes, threads, tmp, 'digits hvt_ti_2')
    from PIL import Image
    from skimage import data
    photos, found = [Image.fromarray(getattr(data, n)()).convert('RGB') for n in PHOTOS], []
    for n in [n for n in models if not n.startswith('authors_')]:
        try:
            model = timm.create_model(n, pretrained=True).eval().requires_grad_(False)
        except Exception:  # not in the local caches
            continue
        found.append(n)
        px = torch.stack([timm.data.create_transform(**timm.data.resolve_data_config(model=model))(i) for i in photos])
        acc += accuracy(model, px, None, [px[i:i + 1].numpy() for i in range(len(px))], routes, threads, tmp,
                        f'{n} (pretrained), photos')
    (accs := pd.DataFrame(acc)).to_csv(out / 'cpu_accuracy.csv', index=False)

    hvt = speed[speed.model.isin(['hvt_ti_1', 'hvt_s_4'])]
    goals = pd.concat([d.assign(goal=g, at_least=least, measured=d[k], rounds=d[f'{k}_rounds']) for g, least, k, d in (
        ('the exact route over eager fp32', 2., 'vs_eager', hvt[(hvt.model == 'hvt_s_4') & (hvt.route == EXACT)]),
        ('over DeiT-S, the same route', 1., 'vs_deit_s', hvt),  # the project's promise: never slower than theirs
        ("over the authors' code", 1., 'vs_authors', hvt[hvt.route.isin(ROUTES[:2] + ROUTES[-1:])]))])
    goals = goals[['model', 'goal', 'route', 'at_least', 'measured', 'rounds']].assign(met=np.where(
        goals.measured >= goals.at_least, 'yes', np.where(goals.measured.isna(), 'not measured', 'no')))
    goals.to_csv(out / 'cpu_goals.csv', index=False)
    show = speed.drop(columns=[c for c in speed if c.endswith('_rounds')]).assign(**{
        k: [f'{v:.2f} ({rr})' if rr else '–' for v, rr in zip(speed[k], speed[f'{k}_rounds'])]
        for k in ('vs_eager', 'vs_deit_s', 'vs_authors')})
    text = [
        f"# CPU routes\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `python -m "
        f"benchmarks.bench_cpu {' '.join(sys.argv[1:])}` ({time.time() - t_start:.0f} s) on {cpu}, "
        f"{os.cpu_count()} logical CPUs; {threads} thread(s) on every route; batch {batch}, 224x224, {rounds} "
        f"interleaved round(s); torch {torch.__version__}, timm {timm.__version__}, timm-hvt {timm_hvt.__version__};"
        f" malloc {os.environ.get('GLIBC_TUNABLES', 'default')}; load average at the end "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}.\n", '## Goals\n', md(goals),
        f"\n## Time per batch\n\nms: median over the rounds. vs_*: speed-up over eager fp32, over the same route of "
        f"{deit or 'DeiT-S (not run)'} and of the authors' code (lowest-highest within one round). GFLOP/s: 2 x "
        f'GMACs (count_gmacs) x batch / time, x 3 for a training step; peak_frac: over the fp32 peak, {peak:.0f} '
        f'GFLOP/s: {how}. rel_logit_diff_random_weights: max abs logit difference from eager fp32 over the max abs '
        'logit, random weights: an exactness check, not an accuracy.\n', md(show),
        f'\n## Accuracy cost\n\nThe digits HVT trained here (hvt_ti_2, {DIGITS}, {epochs} epoch(s), batch 16, AdamW) '
        f'on {len(dx)} held-out digits; rel_logit_err: ||logits - fp32 logits|| / ||fp32 logits|| over them. INT8 '
        f"calibrated on {len(dcalib)} training images. Pretrained weights in the local caches: "
        f"{', '.join(found) or 'none present'} (photos: scikit-image's {', '.join(PHOTOS)}).\n", md(accs)]
    (out / 'cpu_routes.md').write_text('\n'.join(text))
    print('\n'.join([md(goals), md(show), md(accs)]), f'\ndone in {time.time() - t_start:.0f} s: {out}')


if __name__ == '__main__':
    main()
