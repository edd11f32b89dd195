"""Distributed training: torchrun starts 2 CPU processes (gloo) that train HVT under DistributedDataParallel through
timm's components (tests/_ddp_worker.py).

* timm's pipeline under DDP (one short epoch on a small slice of the digits): both ranks finish with identical
  weights and EMA weights, and rank 0's checkpoint loads into a fresh model.
* DDP computes what one process computes: the first step's gradients and the weights after three SGD steps equal
  (relative to their size) a single process training on the two ranks' batches together.
* No global_pool / class-token setting leaves a parameter without gradient (DDP without find_unused_parameters
  would fail).
Learning itself is tested on the full digits in test_digits.py.
"""
import json
import os
import socket
import subprocess
import sys

import torch

from _ddp_worker import BATCH, IMG, SETTINGS, small_hvt

HERE = os.path.dirname(os.path.abspath(__file__))
WORLD_SIZE = 2
IMAGES = 2 * WORLD_SIZE * BATCH  # two steps per rank


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun() -> list:
    exe = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    return [exe] if os.path.exists(exe) else [sys.executable, '-m', 'torch.distributed.run']


def _launch(data_dir: str, out_dir: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', GLOO_SOCKET_IFNAME='lo', PYTHONUNBUFFERED='1')
    for attempt in range(2):  # the free port could be taken between probing and binding
        cmd = _torchrun() + [
            '--nnodes=1', f'--nproc-per-node={WORLD_SIZE}', '--master-addr=127.0.0.1',
            f'--master-port={_free_loopback_port()}', '--max-restarts=0',
            os.path.join(HERE, '_ddp_worker.py'), data_dir, out_dir]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode == 0 or 'address already in use' not in proc.stderr.lower():
            return proc
    return proc


def test_ddp_two_ranks_train_hvt(digits_folder, tmp_path):
    data_dir, out_dir = digits_folder(IMG, limit=IMAGES), str(tmp_path / 'out')
    os.makedirs(out_dir)
    proc = _launch(data_dir, out_dir)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f'torchrun failed ({proc.returncode}):\n{proc.stderr[-6000:]}'

    results = []
    for rank in range(WORLD_SIZE):
        with open(os.path.join(out_dir, f'rank{rank}.json')) as f:
            results.append(json.load(f))
    assert [r['rank'] for r in results] == list(range(WORLD_SIZE))
    for r in results:
        assert r['world_size'] == WORLD_SIZE and r['finished'], r.get('traceback')
        assert r['hvt_registered']  # the autoload hook registered HVT in the torchrun children

    # 1. the pipeline under DDP
    p0, p1 = results[0]['pipeline'], results[1]['pipeline']
    print(f'DDP pipeline: {WORLD_SIZE} ranks x {p0["train_images_this_rank"]} images, losses rank0 {p0["losses"]}')
    assert p0['wrapper'] == 'DistributedDataParallel'
    assert p0['init_param_sum'] != p1['init_param_sum'], 'ranks were seeded alike; the sync check would be vacuous'
    # DistributedSampler: each rank its half of the train split
    assert p0['train_images_this_rank'] == p1['train_images_this_rank'] == IMAGES // WORLD_SIZE
    assert len(p0['losses']) == len(p1['losses']) == 2 and p0['losses'] != p1['losses']  # each rank its own shard
    assert p0['params_equal_across_ranks'] and p1['params_equal_across_ranks']
    assert p0['ema_equal_across_ranks'] and p1['ema_equal_across_ranks']

    states = [torch.load(os.path.join(out_dir, f'rank{r}.pt')) for r in range(WORLD_SIZE)]
    for kind in ('model', 'ema'):
        assert states[0][kind].keys() == states[1][kind].keys()
        for k, v in states[0][kind].items():
            assert torch.equal(v, states[1][kind][k]), f'{kind} {k} differs between ranks'
    # rank 0's CheckpointSaver wrote a checkpoint without the DDP 'module.' prefix that loads into a fresh model
    ckpt = torch.load(os.path.join(out_dir, 'last.pth.tar'), weights_only=False)
    model = small_hvt()
    model.load_state_dict(ckpt['state_dict'])
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[0]['model'][k]), k

    # 2. DDP (two half batches, gradients averaged) equals one process on the whole batch
    for r in results:
        single = r['against_single_process']
        assert set(single['grad_errors']) == set(single['update_errors']) == {n for n, _ in model.named_parameters()}
        worst_grad = max(single['grad_errors'].items(), key=lambda kv: kv[1])
        worst_update = max(single['update_errors'].items(), key=lambda kv: kv[1])
        print(f'DDP vs one process, rank {r["rank"]}: worst relative error of step-1 gradients {worst_grad}, of '
              f'the weight updates after {single["steps"]} SGD steps {worst_update}')
        assert worst_grad[1] <= 1e-4, f'rank {r["rank"]}: DDP gradient of {worst_grad[0]} differs from one process'
        assert worst_update[1] <= 1e-4, f'rank {r["rank"]}: DDP update of {worst_update[0]} differs from one process'

    # 3. every global_pool / class-token setting trains under DDP with find_unused_parameters=False
    assert len(results[0]['settings']) == len(SETTINGS)
    for s0, s1 in zip(results[0]['settings'], results[1]['settings']):
        name = f'global_pool={s0["global_pool"]!r} class_token={s0["class_token"]} {s0["extra"]}'
        for s in (s0, s1):
            assert s['error'] is None, f'{name}: {s["error"]}'
            assert s['params_without_grad'] == [], f'{name}: unused parameters {s["params_without_grad"]}'
            assert s['params_equal_across_ranks'], f'{name}: parameters differ between ranks'
