"""Fixtures shared by the test files: one torch thread per worker, and what is built once per test run (the release
artifacts, the digits as an ImageFolder) whichever pytest-xdist worker asks first."""
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import pytest

# torch.compile's C++ kernels are built in this process: a pool of compile workers (each one importing torch) costs
# more than it saves when two test workers already keep two cores busy; read when inductor is first imported
os.environ.setdefault('TORCHINDUCTOR_COMPILE_THREADS', '1')

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

if os.environ.get('PYTEST_XDIST_WORKER'):  # .ci/run runs two workers on two cores: one intra-op thread each
    torch.set_num_threads(1)


# The files that take longest, first: .ci/run hands whole files to its two workers in collection order (--dist
# loadfile --no-loadscope-reorder), and a long file started last leaves one core idle while it runs.
RUN_FIRST = ('test_readme.py', 'test_hvt_model.py', 'test_compile.py', 'test_benchmarks.py', 'test_deploy.py',
             'test_backbone.py', 'test_timm_conformance.py', 'test_gpu_run.py', 'test_autoload.py',
             'test_distributed.py', 'test_export.py', 'test_convert.py', 'test_digits.py', 'test_cli_list.py')


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread. The models these tests train or export are tiny: a second thread gains
    little, and OpenMP threads that wait on a busy core slow everything down many times over on a shared 2-core
    machine. Results must not depend on this (the suite also passes with OMP_NUM_THREADS=1 or many threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by `build(folder)` once per test run: the first worker to ask builds it while the
    others wait for it (pytest-xdist workers share the parent of their temporary folders). A failed build leaves
    nothing behind, so whoever asks next builds again and fails the same way."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    folder, done = base / f'shared-{name}', base / f'shared-{name}.done'
    with open(base / f'shared-{name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _clean_checkout(target: Path) -> None:
    """The files of a fresh clone with this work tree committed: what git tracks or would track (not ignored)."""
    listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=REPO,
                            capture_output=True, text=True)
    assert listed.returncode == 0, f'git ls-files failed: {listed.stderr}'
    for name in filter(None, listed.stdout.split('\0')):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not listed as a file
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _build(kind: str, source: Path, outdir: Path) -> Path:
    before = set(outdir.glob('*'))
    proc = subprocess.run([sys.executable, '-m', 'build', '--no-isolation', f'--{kind}', '--outdir', str(outdir),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'building the {kind} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
    built = set(outdir.glob('*')) - before
    assert len(built) == 1, built
    return built.pop()


def _build_release(root: Path) -> None:
    checkout = root / 'checkout'
    _clean_checkout(checkout)
    dist = root / 'dist'
    dist.mkdir()
    sdist = _build('sdist', checkout, dist)
    with tarfile.open(sdist) as tar:
        tar.extractall(root / 'unpacked', filter='data')
    unpacked, = (root / 'unpacked').iterdir()
    _build('wheel', unpacked, dist)  # from the sdist alone, as `python -m build` makes it


@pytest.fixture(scope='session')
def release_artifacts(tmp_path_factory) -> dict:
    """The sdist, built from the files of a clean checkout, and the wheel built from that sdist (as `python -m build`
    does), both without build isolation (no network: this environment's setuptools builds them)."""
    dist = build_once(tmp_path_factory, 'release', _build_release) / 'dist'
    sdist, = dist.glob('*.tar.gz')
    wheel, = dist.glob('*.whl')
    return dict(sdist=sdist, wheel=wheel)


@pytest.fixture(scope='session')
def digits_folder(tmp_path_factory) -> Callable[..., str]:
    """digits_folder(img_size, limit=None): scikit-learn's digits as an ImageFolder (benchmarks/digits.py, the fixed
    stratified 80/20 split; `limit` keeps the first images of each split), written once per test run."""
    def get(img_size: int, limit: int = None) -> str:
        from benchmarks.digits import export_digits
        name = f'digits{img_size}' + (f'-{limit}' if limit else '')
        return str(build_once(tmp_path_factory, name, lambda root: export_digits(str(root), img_size, limit=limit)))
    return get
