"""After `pip install` (regular or editable), the HVT models are registered once timm is imported, whatever ran first.

The wheel is built once, from a copy of the sources, without build isolation and without an index. Each install
goes into a throwaway virtual environment that reuses this environment's packages (torch, timm, transformers, ...)
through a plain path entry, so only the installed timm-hvt's own .pth hook can register the models.

Every case is a fresh interpreter started from a directory outside the source tree (one start-up order each). As
most of them pay for importing torch and timm, all cases are started together when the module's first test asks
for one, a few at a time, and each test waits for its own.
"""
import json
import os
import pkgutil
import re
import shutil
import site
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
N_MODELS = 10  # hvt_ti_0..4, hvt_s_0..4
HEAVY = ('torch', 'timm', 'timm_hvt', 'numpy')

# Runs first in every case: records what start-up imported, before the case's own first statement.
PRELUDE = f"""
import sys
HEAVY_AT_START = sorted({set(HEAVY)!r} & set(sys.modules))
HOOK_RAN = '_timm_hvt_autoload' in sys.modules
import json


def hvt_models():
    return len(sys.modules['timm'].list_models('hvt*'))


def loader_modules():
    timm = sys.modules['timm']
    return [type(timm.__loader__).__module__, type(timm.__spec__.loader).__module__]


def done(**facts):
    print('RESULT ' + json.dumps(dict(heavy_at_start=HEAVY_AT_START, hook_ran=HOOK_RAN, **facts)))
"""

# Two fresh interpreters: this one imports timm first thing; the worker it spawns (as DataLoader workers and
# torchrun ranks are started) imports timm in its own start-up state.
IMPORT_TIMM_AND_SPAWN = """
import importlib
import multiprocessing
import pkgutil


def worker(_):
    before = sorted({'timm', 'torch'} & set(sys.modules))
    import timm
    return before, len(timm.list_models('hvt*'))


if __name__ == '__main__':
    import timm
    models = hvt_models()  # before anything here imports timm_hvt
    model = type(timm.create_model('hvt_ti_1')).__name__
    import timm_hvt
    modules = sorted(m.name for m in pkgutil.iter_modules(timm_hvt.__path__))
    for name in modules:  # every module the wheel installed imports
        importlib.import_module('timm_hvt.' + name)
    loaders = loader_modules()
    importlib.reload(timm)
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        worker_before, worker_models = pool.map(worker, [0])[0]
    done(models=models, package=timm_hvt.__file__, model=model, modules=modules, loaders=loaders,
         models_after_reload=hvt_models(), loaders_after_reload=loader_modules(),
         worker_before=worker_before, worker_models=worker_models)
"""

PROBES_ONLY = """
import importlib.metadata
import importlib.util
found = [importlib.util.find_spec('timm') is not None, importlib.util.find_spec('timm') is not None,
         bool(importlib.metadata.version('timm')), importlib.metadata.distribution('timm') is not None]
done(found=all(found), after_probe=sorted({'timm', 'torch', 'timm_hvt', 'numpy'} & set(sys.modules)))
"""

# A probe that does not import must not disarm the hook; each case also starts timm by another first import.
FIND_SPEC_THEN_LAYERS = """
import importlib.util
found = importlib.util.find_spec('timm') is not None
after_probe = sorted({'timm', 'torch'} & set(sys.modules))
import timm.layers
package = getattr(sys.modules.get('timm_hvt'), '__file__', '')
done(found=found, after_probe=after_probe, models=hvt_models(), package=package, loaders=loader_modules())
"""

METADATA_THEN_MODELS = """
import importlib.metadata
found = bool(importlib.metadata.version('timm')) and importlib.metadata.distribution('timm').metadata['Name'] == 'timm'
after_probe = sorted({'timm', 'torch'} & set(sys.modules))
import timm.models as timm_models
done(found=found, after_probe=after_probe, models=len(timm_models.list_models('hvt*')))
"""

TRANSFORMERS_THEN_FROM_TIMM = """
import transformers
from timm import create_model
done(models=hvt_models(), model=type(create_model('hvt_ti_1')).__name__)
"""

# With a stand-in timm (a bare package on PYTHONPATH) nothing heavy is imported: these check the hook's own logic.
STUB_TIMM = """
import importlib.util
import warnings
importlib.util.find_spec('timm')
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import timm
done(stub=getattr(timm, 'STUB', False), timm_hvt_imported='timm_hvt' in sys.modules,
     warnings=[str(w.message) for w in caught])
"""

# name: (install, code, extra environment); code runs after PRELUDE in a fresh interpreter. Started in this order:
# the quick ones first, then the slowest.
CASES = {
    'probes without an import': ('regular', PROBES_ONLY, {}),
    'stub timm, timm_hvt fails to import': ('regular', STUB_TIMM, {'PYTHONPATH': '{root}/stub:{root}/broken'}),
    'stub timm, autoload off': ('regular', STUB_TIMM, {'PYTHONPATH': '{root}/stub', 'TIMM_HVT_AUTOLOAD': '0'}),
    'editable: stub timm, autoload off': ('editable', STUB_TIMM, {'PYTHONPATH': '{root}/stub',
                                                                  'TIMM_HVT_AUTOLOAD': '0'}),
    'import timm, then a spawned worker': ('regular', IMPORT_TIMM_AND_SPAWN, {}),
    'import transformers, then from timm import create_model': ('regular', TRANSFORMERS_THEN_FROM_TIMM, {}),
    'find_spec probe, then import timm.layers': ('regular', FIND_SPEC_THEN_LAYERS, {}),
    'importlib.metadata probes, then import timm.models': ('regular', METADATA_THEN_MODELS, {}),
    'editable: find_spec probe, then import timm.layers': ('editable', FIND_SPEC_THEN_LAYERS, {}),
}


def _make_env(root: Path) -> Path:
    venv.create(root, with_pip=False, symlinks=True)
    python = root / 'bin' / 'python'
    purelib = subprocess.check_output([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                      text=True).strip()
    # this environment's packages as a plain path: its own .pth files (our editable hook among them) stay inert
    Path(purelib, '_host_packages.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    return python


def _pip(*args: str, python: Path = None) -> None:
    target = ['--python', str(python)] if python else []
    subprocess.run([sys.executable, '-m', 'pip', *target, *args, '--quiet', '--no-deps', '--no-index'],
                   check=True, cwd=REPO)


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'TIMM_HVT_AUTOLOAD')}
    env.update(OMP_NUM_THREADS='1', **extra)
    return env


def _regular(tmp: Path) -> tuple:
    """The wheel, built once from a copy of the sources (no build/ left in the shared checkout), then installed."""
    source = tmp / 'source'
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        '.git', 'build', 'dist', '*.egg-info', '__pycache__', '.venv', '.pytest_cache', 'tests', 'benchmarks', '.ci'))
    _pip('wheel', '--no-build-isolation', '--wheel-dir', str(tmp / 'wheels'), str(source))
    wheel, = (tmp / 'wheels').glob('timm_hvt-*.whl')
    python = _make_env(tmp / 'venv')
    _pip('install', str(wheel), python=python)
    return python, tmp


def _editable(tmp: Path) -> tuple:
    python = _make_env(tmp / 'venv')
    _pip('install', '--no-build-isolation', '--editable', str(REPO), python=python)
    return python, tmp


def _run_case(python: Path, root: Path, name: str, code: str, extra: dict) -> subprocess.CompletedProcess:
    script = root / (re.sub(r'\W+', '_', name).strip('_') + '.py')
    script.write_text(PRELUDE + code)
    extra = {k: v.format(root=root) for k, v in extra.items()}
    return subprocess.run([python, script.name], cwd=root, env=_clean_env(**extra), capture_output=True, text=True,
                          timeout=240)


def _run_console_script(python: Path, root: Path, args: list) -> subprocess.CompletedProcess:
    return subprocess.run([python.parent / 'timm-hvt', *args], cwd=root, env=_clean_env(), capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope='module')
def installs(tmp_path_factory):
    with ThreadPoolExecutor(2) as pool:
        regular = pool.submit(_regular, tmp_path_factory.mktemp('regular'))
        editable = pool.submit(_editable, tmp_path_factory.mktemp('editable'))
        envs = {'regular': regular.result(), 'editable': editable.result()}
    for _, root in envs.values():
        (root / 'stub' / 'timm').mkdir(parents=True)
        (root / 'stub' / 'timm' / '__init__.py').write_text('STUB = True\n')
        (root / 'broken' / 'timm_hvt').mkdir(parents=True)
        (root / 'broken' / 'timm_hvt' / '__init__.py').write_text("raise RuntimeError('deliberately broken')\n")
    return envs


@pytest.fixture(scope='module')
def started(installs):
    """Every case, started at once (a few at a time): name -> future of its CompletedProcess."""
    pool = ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2)))
    futures = {name: pool.submit(_run_case, *installs[kind], name, code, extra)
               for name, (kind, code, extra) in CASES.items()}
    futures['timm-hvt --help'] = pool.submit(_run_console_script, *installs['regular'], ['--help'])
    yield futures
    pool.shutdown(cancel_futures=True)


def _facts(started, name: str) -> dict:
    result = started[name].result()
    assert result.returncode == 0, f'{name}: exit {result.returncode}\n{result.stderr[-3000:]}'
    lines = [line for line in result.stdout.splitlines() if line.startswith('RESULT ')]
    assert lines, f'{name}: no result\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}'
    facts = json.loads(lines[-1][len('RESULT '):])
    assert facts.pop('heavy_at_start') == [], f'{name}: imported at start-up'
    assert facts.pop('hook_ran'), f'{name}: the .pth hook did not run'
    return facts


@pytest.mark.parametrize('case', ['probes without an import', 'editable: stub timm, autoload off'])
def test_startup_hook_runs_and_imports_nothing_heavy(started, case):
    """That the hook ran and what it imported (`_facts` checks this for every case: neither torch, timm, timm_hvt nor
    numpy is in sys.modules at start-up). What it costs in time is measured, not asserted: `python -X importtime`."""
    _facts(started, case)


def test_import_timm_alone_registers_the_models_and_leaves_timm_as_it_was(started, installs):
    facts = _facts(started, 'import timm, then a spawned worker')
    assert facts['models'] == N_MODELS
    assert installs['regular'][1] in Path(facts['package']).parents  # the copy pip installed, not the source tree
    assert facts['model'] == 'HierarchicalVisionTransformer'
    assert facts['modules'] == sorted(m.name for m in pkgutil.iter_modules([str(REPO / 'timm_hvt')]))
    assert '_timm_hvt_autoload' not in facts['loaders'], 'timm keeps the wrapped loader'
    assert facts['models_after_reload'] == N_MODELS  # importlib.reload(timm)
    assert '_timm_hvt_autoload' not in facts['loaders_after_reload']


@pytest.mark.parametrize('case', ['find_spec probe, then import timm.layers',
                                  'importlib.metadata probes, then import timm.models',
                                  'editable: find_spec probe, then import timm.layers'])
def test_a_probe_first_does_not_disarm_the_hook(started, installs, case):
    facts = _facts(started, case)
    assert facts['found']
    assert facts['after_probe'] == []  # the probe itself imported neither timm nor torch
    assert facts['models'] == N_MODELS
    if 'package' in facts:
        expected = REPO if case.startswith('editable') else installs['regular'][1]
        assert expected in Path(facts['package']).parents
    if 'loaders' in facts:
        assert '_timm_hvt_autoload' not in facts['loaders']


def test_probes_without_an_import_import_nothing(started):
    facts = _facts(started, 'probes without an import')
    assert facts['found']
    assert facts['after_probe'] == []


def test_import_transformers_first(started):
    """transformers probes optional packages (find_spec, importlib.metadata) when it is imported."""
    facts = _facts(started, 'import transformers, then from timm import create_model')
    assert facts['models'] == N_MODELS
    assert facts['model'] == 'HierarchicalVisionTransformer'


def test_spawned_worker_sees_the_models(started):
    """DataLoader workers and torchrun ranks start fresh interpreters: the hook has to run there too."""
    facts = _facts(started, 'import timm, then a spawned worker')
    assert facts['worker_before'] == []
    assert facts['worker_models'] == N_MODELS


@pytest.mark.parametrize('case', ['stub timm, autoload off', 'editable: stub timm, autoload off'])
def test_autoload_can_be_turned_off(started, case):
    facts = _facts(started, case)
    assert facts['stub']
    assert not facts['timm_hvt_imported']
    assert facts['warnings'] == []


def test_import_timm_survives_a_broken_timm_hvt(started):
    """Also the counterpart of the off switch's test: with the hook on, the same stand-in timm triggers it."""
    facts = _facts(started, 'stub timm, timm_hvt fails to import')
    assert facts['stub']
    assert not facts['timm_hvt_imported']
    assert len(facts['warnings']) == 1 and 'deliberately broken' in facts['warnings'][0]


def test_console_script_is_installed(started, installs):
    """`timm-hvt` imports timm_hvt before timm: the hook then fires inside timm_hvt's own import, harmlessly."""
    usage = started['timm-hvt --help'].result()
    assert usage.returncode == 0, usage.stderr[-3000:]
    assert usage.stdout.startswith('usage: timm-hvt')
    assert 'timm-hvt:' not in usage.stderr  # the hook's warning
    python, _ = installs['editable']
    assert 'timm_hvt.cli' in (python.parent / 'timm-hvt').read_text()


def test_hook_without_its_module_stays_silent(tmp_path):
    """An editable install whose source tree moved away leaves the .pth behind: start-up must not print a traceback."""
    python = _make_env(tmp_path / 'venv')
    purelib = subprocess.check_output([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                      text=True).strip()
    Path(purelib, 'timm_hvt_autoload.pth').write_text((REPO / 'timm_hvt_autoload.pth').read_text())
    result = subprocess.run([python, '-c', 'import sys; print("_timm_hvt_autoload" in sys.modules)'], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == 'False'
    assert result.stderr == ''
