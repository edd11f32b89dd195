#!/usr/bin/env python3
"""Speed, cost and scaling of HVT against DeiT and PiT, in one run, on whatever device is present.

    python benchmarks/bench_hvt.py                 # full run, results in benchmarks/results/
    python benchmarks/bench_hvt.py --quick         # every file and row, tiny batches, < 1 minute

Measured for hvt_ti_0..4, hvt_s_0..4, deit_tiny/small and pit_ti/xs/s: parameters, GMACs (attention matmuls
counted, as the HVT paper counts), inference and training-step (forward + backward + AdamW) images/s, peak tensor
memory, at batch 1 and 32, fp32 and bf16 autocast, eager and torch.compile (inference, on a subset); images/s of
HVT against DeiT at 224/288/384/448 (dynamic_img_size); the device's fp32 and bf16 GEMM rate and each model's
achieved fraction of it. Every comparison is timed in one group of interleaved rounds and reported as medians.
Writes results.csv, gemm.csv, targets.csv, results.md, env.json and PNG plots to --out.
"""
import argparse
import copy
import gc
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hvtbench import env as benv  # noqa: E402
from hvtbench import models as bm  # noqa: E402
from hvtbench import breakdown  # noqa: E402
from hvtbench import report  # noqa: E402
from hvtbench.measure import DTYPES, Case, gemm_cases, run_group  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass
class Plan:
    models: List[str] = field(default_factory=lambda: list(bm.ALL_MODELS))
    batch: int = 32  # the large batch
    rounds: int = 11  # fp32 batch-32 inference: the group the targets are judged on
    rounds_other: int = 3
    rounds_train: int = 5
    warmup: int = 1
    min_sample_s: float = 0.25  # short steps (batch 1) are timed over several calls per sample
    sizes: Tuple[int, ...] = (224, 288, 384, 448)
    sweep_models: List[str] = field(default_factory=lambda: list(bm.SWEEP_MODELS))
    sweep_batch: int = 8
    unfused_models: List[str] = field(default_factory=lambda: list(bm.TARGET_HVT))
    compile_models: List[str] = field(default_factory=lambda: list(bm.COMPILE_MODELS))
    compile_dtypes: Tuple[str, ...] = ('fp32', 'bf16')
    compile_models_bf16: List[str] = field(default_factory=lambda: ['hvt_s_1', 'deit_small_patch16_224'])
    gemm_square: Tuple[int, ...] = (2048, 4096)
    fast_init: bool = False

    @classmethod
    def quick(cls) -> 'Plan':
        return cls(batch=2, rounds=1, rounds_other=1, rounds_train=1, warmup=0, min_sample_s=0.0, sizes=(224, 288),
                   sweep_batch=1, compile_models=[], gemm_square=(512,), fast_init=True)


def _amp(device: torch.device, dtype: str):
    if dtype == 'fp32':
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def _inputs(batch: int, img_size: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    return x, y


def _state_tensors(model: nn.Module, opt: Optional[torch.optim.Optimizer], *extra: torch.Tensor):
    def gen():
        yield from model.parameters()
        yield from model.buffers()
        for p in model.parameters():
            if p.grad is not None:
                yield p.grad
        if opt is not None:
            for st in opt.state.values():
                for v in st.values():
                    if isinstance(v, torch.Tensor):
                        yield v
        yield from extra
    return list(gen())


def infer_case(group: str, name: str, model: nn.Module, runner: Callable, device: torch.device, batch: int,
               img_size: int, dtype: str, mode: str = 'eager', attn: str = 'fused', track_memory: bool = True) -> Case:
    x, _ = _inputs(batch, img_size, device)
    amp = _amp(device, dtype)
    fused = attn == 'fused'

    def prepare():
        model.eval()
        bm.set_fused_attn(model, fused)

    def step():
        with torch.inference_mode(), amp():
            runner(x)

    meta = dict(group=group, kind='model', model=name, task='infer', img_size=img_size, batch=batch, dtype=dtype,
                mode=mode, attn=attn)
    track = (lambda: _state_tensors(model, None, x)) if mode == 'eager' and track_memory else None
    return Case(meta=meta, step=step, work=batch, device=device, prepare=prepare, track_memory=track)


def train_case(group: str, name: str, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device,
               batch: int, dtype: str, attn: str = 'fused', track_memory: bool = True, prime: bool = True) -> Case:
    x, y = _inputs(batch, 224, device)
    amp = _amp(device, dtype)
    fused = attn == 'fused'

    def prepare():
        model.train()
        bm.set_fused_attn(model, fused)

    def train_on(images: torch.Tensor, labels: torch.Tensor) -> None:
        with amp():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step():
        train_on(x, y)

    def prime_step():  # one step on a single image, so the optimizer state exists before the measured steps
        if opt.state:
            return
        prepare()
        train_on(x[:1], y[:1])

    meta = dict(group=group, kind='model', model=name, task='train', img_size=224, batch=batch, dtype=dtype,
                mode='eager', attn=attn)
    return Case(meta=meta, step=step, work=batch, device=device, prepare=prepare, prime=prime_step if prime else None,
                track_memory=(lambda: _state_tensors(model, opt, x, y)) if track_memory else None)


class Progress:
    def __init__(self, total: int, enabled: bool = True) -> None:
        self.bar = None
        self.total = total
        self.done = 0
        self.t0 = time.time()
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit='call', dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            pass

    def group(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(name)
        else:
            print(f'[{time.time() - self.t0:6.0f}s] {name}', file=sys.stderr, flush=True)

    def __call__(self, case: Case) -> None:
        self.done += 1
        m = case.meta
        label = m.get('model') or m.get('shape')
        if self.bar is not None:
            self.bar.set_postfix_str(f"{label} {m.get('task', 'gemm')} {m['dtype']} b{m.get('batch', '')} "
                                     f"{m.get('mode', '')}", refresh=False)
            self.bar.update(1)
        elif self.done % 20 == 0:
            print(f'  {self.done}/{self.total}', file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def gemm_shapes(plan: Plan) -> List[tuple]:
    shapes = [(f'square {s}', s, s, s) for s in plan.gemm_square]
    # the linears of HVT-S at the batch measured: first stage 196 tokens, after one pooling 97
    return shapes + bm.linear_gemm_shapes(plan.batch, (196, 97) if plan.batch >= 8 else (196,), 384)


PROFILE_MODELS = ('hvt_s_1', 'deit_small_patch16_224')
# the baseline each target compares an HVT with; the GEMM shapes are the reference of hvt_s_1's GEMM fraction
TARGET_PARTNER = {'deit_small_patch16_224': 'hvt_s_4', 'deit_tiny_patch16_224': 'hvt_ti_1'}
GEMM_PARTNER = 'hvt_s_1'


def in_target_order(cases: List[Case], models: Sequence[str]) -> List[Case]:
    """Put the cases a target compares next to each other (an HVT's eager fp32 case, then its baseline, then its
    unfused-attention and compiled cases, then the GEMM shapes for hvt_s_1), so that the two samples a per-round
    ratio pairs are taken seconds apart rather than half a round apart. Otherwise the order is kept."""
    def key(case: Case):
        m = case.meta
        if m['kind'] == 'gemm':
            anchor, rank = GEMM_PARTNER, 4
        else:
            anchor = TARGET_PARTNER.get(m['model'], m['model'])
            rank = (0 if m['dtype'] == 'fp32' and m.get('mode') == 'eager' and m.get('attn') == 'fused' else
                    1 if m.get('attn') == 'unfused' else 2 if m.get('mode') == 'compile' else 3)
        return models.index(anchor) if anchor in models else len(models), rank
    return sorted(cases, key=key)


GROUPS = ('infer_fp32', 'infer_bf16', 'infer_b1', 'train', 'train_b1', 'sweep')


def build_groups(plan: Plan, device: torch.device, bases: Dict[str, nn.Module], info: Dict[tuple, dict],
                 only: Sequence[str] = GROUPS) -> List[Tuple[str, List[Case], int]]:
    """The groups of interleaved cases, in the order they run: (name, cases, rounds). Adds the sweep models'
    parameters and GMACs at each size to `info`."""
    B = plan.batch
    groups = []
    compiled = {}

    def compiled_runner(name):
        if name not in compiled:
            compiled[name] = torch.compile(bases[name], dynamic=False)
        return compiled[name]

    for dtype in ('fp32', 'bf16'):
        if f'infer_{dtype}' not in only:
            continue
        g = f'infer_b{B}_{dtype}'
        cases = [infer_case(g, n, bases[n], bases[n], device, B, 224, dtype) for n in plan.models]
        if dtype == 'fp32':
            cases += [infer_case(g, n, bases[n], bases[n], device, B, 224, dtype, attn='unfused')
                      for n in plan.unfused_models if n in bases]
        if dtype in plan.compile_dtypes:
            names = plan.compile_models if dtype == 'fp32' else [
                n for n in plan.compile_models_bf16 if n in plan.compile_models]
            cases += [infer_case(g, n, bases[n], compiled_runner(n), device, B, 224, dtype, mode='compile')
                      for n in names if n in bases]
        cases += gemm_cases(gemm_shapes(plan), dtype, device, g)
        groups.append((g, in_target_order(cases, plan.models), plan.rounds if dtype == 'fp32' else plan.rounds_other))

    if 'infer_b1' in only:
        g = 'infer_b1'
        groups.append((g, [infer_case(g, n, bases[n], bases[n], device, 1, 224, dtype, track_memory=False)
                           for dtype in ('fp32', 'bf16') for n in plan.models], plan.rounds_other))

    trainees = {}

    def trainee(name):
        # a copy per model, shared by its training cases, with one AdamW (its state created once)
        if name not in trainees:
            model = copy.deepcopy(bases[name])
            trainees[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-6))
        return trainees[name]

    for which, batch, rounds in (('train', B, plan.rounds_train), ('train_b1', 1, plan.rounds_other)):
        if which not in only:
            continue
        g = f'train_b{batch}'
        kw = dict(track_memory=batch == B, prime=plan.warmup > 0)
        cases = [train_case(g, n, *trainee(n), device, batch, dtype, **kw) for dtype in ('fp32', 'bf16')
                 for n in plan.models]
        if batch == B:
            cases += [train_case(g, n, *trainee(n), device, batch, 'fp32', attn='unfused', **kw)
                      for n in plan.unfused_models if n in bases]
        groups.append((g, in_target_order(cases, plan.models), rounds))

    if 'sweep' in only:
        g = f'sweep_b{plan.sweep_batch}'
        cases = []
        for n in plan.sweep_models:
            model = bm.build(n, device, dynamic=True, fast_init=plan.fast_init)
            for s in plan.sizes:
                info.setdefault((n, s), {}).update(params_m=bm.params_m(model), gmacs=bm.gmacs(model, s))
            cases += [infer_case(g, n, model, model, device, plan.sweep_batch, s, 'fp32', track_memory=False)
                      for s in plan.sizes]
        groups.append((g, cases, plan.rounds_other))
    return groups


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true',
                   help='every model, file and row, at batch 2 / 1 and one round: checks the pipeline, not speed')
    p.add_argument('--out', type=Path, default=None,
                   help='results directory (default benchmarks/results, or benchmarks/results_quick with --quick)')
    p.add_argument('--device', default=None, help='cuda / cpu / ... (default: cuda if present, else cpu)')
    p.add_argument('--threads', type=int, default=None,
                   help='torch threads (default: torch.get_num_threads(); 1 with --quick)')
    p.add_argument('--models', default=None, help='comma-separated subset of the models')
    p.add_argument('--batch', type=int, default=None, help='the large batch (default 32)')
    p.add_argument('--rounds', type=int, default=None, help='interleaved rounds of the fp32 batch-32 inference group')
    p.add_argument('--rounds-other', type=int, default=None, help='rounds of the other groups')
    p.add_argument('--rounds-train', type=int, default=None, help='rounds of the batch-32 training group')
    p.add_argument('--no-compile', action='store_true', help='skip the torch.compile cases')
    p.add_argument('--groups', default=None,
                   help=f'comma-separated subset of the groups {", ".join(GROUPS)} (default: all); '
                        'infer_fp32 / infer_bf16 / train are at the large batch')
    p.add_argument('--no-progress', action='store_true')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        # one thread: on a machine shared with other jobs, OpenMP barriers across preempted threads can stall the
        # many tiny steps of --quick for seconds; the timings of --quick are not the point
        torch.set_num_threads(1)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    plan = Plan.quick() if args.quick else Plan()
    if args.models:
        wanted = [m.strip() for m in args.models.split(',') if m.strip()]
        unknown = [m for m in wanted if m not in bm.ALL_MODELS]
        if unknown:
            raise SystemExit(f'unknown models {unknown}; choose from {bm.ALL_MODELS}')
        plan = replace(plan, models=wanted, sweep_models=[m for m in plan.sweep_models if m in wanted],
                       unfused_models=[m for m in plan.unfused_models if m in wanted],
                       compile_models=[m for m in plan.compile_models if m in wanted])
    if args.batch:
        plan = replace(plan, batch=args.batch)
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    if args.rounds_other:
        plan = replace(plan, rounds_other=args.rounds_other)
    if args.rounds_train:
        plan = replace(plan, rounds_train=args.rounds_train)
    if args.no_compile:
        plan = replace(plan, compile_models=[])
    out = args.out or (HERE / ('results_quick' if args.quick else 'results'))
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.time()
    env = benv.environment(device)
    env['command'] = 'python benchmarks/bench_hvt.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    torch.manual_seed(0)

    info = {}
    bases = {}
    for name in plan.models:
        model = bm.build(name, device, fast_init=plan.fast_init)
        info[(name, 224)] = dict(params_m=bm.params_m(model), gmacs=bm.gmacs(model, 224))
        if name == GEMM_PARTNER:  # its linears' standalone GEMM rates bound its GEMM fraction
            info[(name, 224)]['linear_shapes'] = bm.linear_shapes(model, 224, plan.batch)
        bases[name] = model
    only = GROUPS
    if args.groups:
        only = [g.strip() for g in args.groups.split(',') if g.strip()]
        unknown = [g for g in only if g not in GROUPS]
        if unknown:
            raise SystemExit(f'unknown groups {unknown}; choose from {list(GROUPS)}')
    groups = build_groups(plan, device, bases, info, only)

    total = sum(len(cases) * ((1 if plan.warmup else 0) + rounds) for _, cases, rounds in groups)
    progress = Progress(total, enabled=not args.no_progress)
    done = []
    env['group_load'] = {}
    for name, cases, rounds in groups:
        progress.group(name)
        t_group, load_start = time.time(), benv.load_average().split()[0]
        run_group(cases, rounds=rounds, warmup=plan.warmup, min_sample_s=plan.min_sample_s, progress=progress)
        env['group_load'][name] = (f'{time.time() - t_group:.0f} s, 1-min load average {load_start} at start, '
                                   f'{benv.load_average().split()[0]} at end')
        gc.collect()
        done += cases
        if not args.quick:  # a checkpoint: a long run that dies late still leaves what it measured
            env['duration_s'] = f'{time.time() - t_start:.0f} (partial: up to {name})'
            env['hardware'] = benv.hardware_line(env)
            report.write_all(out, done, info, env, plan_summary(plan), with_plots=False)
    progress.close()

    # where the time goes, for the GEMM-rate target's model and the DeiT it is weighed against
    prof_rows = []
    if 'infer_fp32' in only and device.type == 'cpu':  # the breakdown reads CPU self time
        for n in [m for m in PROFILE_MODELS if m in bases]:
            bm.set_fused_attn(bases[n], True)
            x, _ = _inputs(plan.batch, 224, device)
            prof_rows += [dict(model=n, batch=plan.batch, dtype='fp32', **r)
                          for r in breakdown.time_breakdown(bases[n], x)]

    env['load_avg_end'] = benv.load_average()
    env['duration_s'] = f'{time.time() - t_start:.0f}'
    env['hardware'] = benv.hardware_line(env)
    all_cases = [c for _, cases, _ in groups for c in cases]
    files = report.write_all(out, all_cases, info, env, plan_summary(plan), prof_rows)
    print(f"done in {env['duration_s']} s; wrote {', '.join(sorted(p.name for p in files))} to {out}")
    return 0


def plan_summary(plan: Plan) -> Dict[str, object]:
    return dict(batch=plan.batch, rounds=plan.rounds, rounds_other=plan.rounds_other, rounds_train=plan.rounds_train,
                warmup=plan.warmup, min_sample_s=plan.min_sample_s, sizes=list(plan.sizes),
                sweep_batch=plan.sweep_batch, unfused_models=plan.unfused_models,
                compile_models=plan.compile_models, compile_models_bf16=plan.compile_models_bf16,
                quick_init=plan.fast_init)


if __name__ == '__main__':
    sys.exit(main())
