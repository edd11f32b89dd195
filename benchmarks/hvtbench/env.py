"""What the numbers were measured on."""
import datetime
import os
import platform
import re
import subprocess
from typing import Dict

import torch


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    flags = set(line.split(':', 1)[1].split())
                    wanted = ['avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile']
                    return ' '.join(f for f in wanted if f in flags)
    except OSError:
        pass
    return ''


def _mem_gb() -> float:
    try:
        with open('/proc/meminfo') as f:
            m = re.search(r'MemTotal:\s+(\d+) kB', f.read())
            return int(m.group(1)) / 2 ** 20 if m else float('nan')
    except OSError:
        return float('nan')


def load_average() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def _git_rev() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(['git', '-C', here, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(['git', '-C', here, 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ('+dirty' if dirty else '') if rev else 'n/a'
    except (OSError, subprocess.SubprocessError):
        return 'n/a'


def environment(device: torch.device) -> Dict[str, str]:
    import timm
    import timm_hvt
    info = {
        'date': datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'),
        'device': str(device),
        'cpu': _cpu_model(),
        'cpu_flags': _cpu_flags(),
        'logical_cpus': str(os.cpu_count()),
        'threads': str(torch.get_num_threads()),
        'memory_gb': f'{_mem_gb():.0f}',
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_hvt': f'{timm_hvt.__version__} ({_git_rev()})',
        'python': platform.python_version(),
        'blas': 'MKL' if torch.backends.mkl.is_available() else 'other',
        'onednn': str(torch.backends.mkldnn.is_available()),
        'load_avg_start': load_average(),
    }
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def hardware_line(env: Dict[str, str]) -> str:
    dev = env.get('gpu') or f"{env['cpu']} ({env['cpu_flags']})"
    return (f"{dev}, {env['logical_cpus']} logical CPUs, {env['threads']} torch threads, {env['memory_gb']} GB RAM; "
            f"torch {env['torch']}, timm {env['timm']}, timm-hvt {env['timm_hvt']}, Python {env['python']}")
