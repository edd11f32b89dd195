"""After `pip install` (regular or editable), the HVT models are registered once timm is imported, whatever ran first.

The regular install is the release wheel (built from the sdist, tests/conftest.py); the editable install is made
from this checkout without build isolation. Each goes into a throwaway virtual environment that reuses this
environment's packages (torch, timm, transformers, ...) through a plain path entry, so only the installed
timm-hvt's own start-up hook can register the models.

Every case is a fresh interpreter started from a directory outside the source tree. The cases the selected tests
need are started together when the first of them asks, a few at a time, and each test waits for its own. Importing
torch and timm costs seconds, so one case takes the real start-up orders one after another (each step checked
before the next) and spawns a worker; where the hook's own logic is all a case checks, a stand-in timm (a bare
package on PYTHONPATH) keeps it to milliseconds.

PEP 829 (Python 3.15) runs the entry point named in `timm_hvt_autoload.start` instead of the `.pth` file's import
line. This Python runs the `.pth` line; the cases call the entry point, as resolved by `pkgutil.resolve_name`, on top
of it (it must arm the hook once) and with the `.pth` line switched off (it must arm the hook alone).
"""
import importlib.util
import json
import os
import pkgutil
import re
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
import importlib.util
import json
import os
import pkgutil
import sysconfig


def hvt_models():
    return len(sys.modules['timm'].list_models('hvt*'))


def loader_modules():
    timm = sys.modules['timm']
    return [type(timm.__loader__).__module__, type(timm.__spec__.loader).__module__]


def armed_finders():
    return sum(getattr(type(f), '_timm_hvt_autoload', False) is True for f in sys.meta_path)


def start_entry_point():
    # what PEP 829 does with the .start file beside the .pth: each line an entry point, called without arguments
    with open(os.path.join(sysconfig.get_paths()['purelib'], 'timm_hvt_autoload.start'), encoding='utf-8') as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    return lines, [pkgutil.resolve_name(line) for line in lines]


def done(**facts):
    print('RESULT ' + json.dumps(dict(heavy_at_start=HEAVY_AT_START, hook_ran=HOOK_RAN, **facts)))
"""

# One fresh interpreter, in this order: probes that do not import must not disarm the hook, nor must the start entry
# point run on top of the .pth line (twice), nor transformers' own probes when it is imported (where it is
# installed: not in the floor environment); then a submodule is timm's first import, which registers the models;
# every installed module of timm_hvt imports; importlib.reload(timm) keeps them; last, where its test is selected
# (not in the floor run), a spawned worker (as DataLoader workers and torchrun ranks are started) imports timm in its
# own start-up state.
FRESH_INTERPRETER = """
import importlib
import importlib.metadata
import importlib.util
import multiprocessing
import warnings


def worker(_):
    before = sorted({'timm', 'torch'} & set(sys.modules))
    import timm
    return before, len(timm.list_models('hvt*'))


if __name__ == '__main__':
    found = [importlib.util.find_spec('timm') is not None, importlib.util.find_spec('timm') is not None,
             bool(importlib.metadata.version('timm')),
             importlib.metadata.distribution('timm').metadata['Name'] == 'timm']
    after_probe = sorted({'timm', 'torch', 'timm_hvt', 'numpy'} & set(sys.modules))
    armed_before = armed_finders()
    entry_points, (install,) = start_entry_point()
    install()
    install()
    armed_after_start = armed_finders()
    transformers_imported = importlib.util.find_spec('transformers') is not None
    if transformers_imported:
        import transformers  # noqa: F401
    after_transformers = sorted({'timm', 'timm_hvt'} & set(sys.modules))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import timm.layers
    models = hvt_models()  # before anything here imports timm_hvt
    import timm
    model = type(timm.create_model('hvt_ti_1')).__name__
    armed_after_import = armed_finders()
    loaders = loader_modules()
    import timm_hvt
    modules = sorted(m.name for m in pkgutil.iter_modules(timm_hvt.__path__))
    for name in modules:
        importlib.import_module('timm_hvt.' + name)
    importlib.reload(timm)
    worker_before = worker_models = None
    if os.environ.get('SPAWN_WORKER') == '1':
        with multiprocessing.get_context('spawn').Pool(1) as pool:
            worker_before, worker_models = pool.map(worker, [0])[0]
    done(found=all(found), after_probe=after_probe, armed_before=armed_before, entry_points=entry_points,
         install=f'{install.__module__}.{install.__qualname__}', armed_after_start=armed_after_start,
         transformers_imported=transformers_imported, after_transformers=after_transformers, models=models,
         hvt_warnings=[str(w.message) for w in caught if 'hvt' in str(w.message)], model=model,
         armed_after_import=armed_after_import, loaders=loaders, package=timm_hvt.__file__, modules=modules,
         models_after_reload=hvt_models(), loaders_after_reload=loader_modules(),
         worker_before=worker_before, worker_models=worker_models)
"""

# With a stand-in timm nothing heavy is imported: these check the hook's own logic.
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

# The .pth line switched off at start-up (TIMM_HVT_AUTOLOAD=0 makes install() return at once), as PEP 829 skips it:
# the start entry point alone must arm the hook.
START_ALONE_STUB_TIMM = """
import warnings
armed_at_start = armed_finders()
os.environ['TIMM_HVT_AUTOLOAD'] = '1'
_, (install,) = start_entry_point()
install()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import timm
done(armed_at_start=armed_at_start, stub=getattr(timm, 'STUB', False), warnings=[str(w.message) for w in caught])
"""

EDITABLE_SOURCES = """
import importlib.util
done(package=importlib.util.find_spec('timm_hvt').origin, hook_module=sys.modules['_timm_hvt_autoload'].__file__,
     armed=armed_finders(), timm_imported='timm' in sys.modules)
"""

FRESH = 'start-up orders in a fresh interpreter'
STUB = {'PYTHONPATH': '{root}/stub'}
STUB_BROKEN = {'PYTHONPATH': '{root}/stub:{root}/broken'}
OFF = {'TIMM_HVT_AUTOLOAD': '0'}

# name: (install, code, extra environment); code runs after PRELUDE in a fresh interpreter. Started in this order:
# the slowest first.
CASES = {
    FRESH: ('regular', FRESH_INTERPRETER, {}),
    'stub timm, timm_hvt fails to import': ('regular', STUB_TIMM, STUB_BROKEN),
    'stub timm, autoload off': ('regular', STUB_TIMM, dict(STUB, **OFF)),
    'stub timm, the .pth line off, the start entry point alone': ('regular', START_ALONE_STUB_TIMM,
                                                                  dict(STUB_BROKEN, **OFF)),
    'editable: where the package and the hook come from': ('editable', EDITABLE_SOURCES, {}),
    'editable: stub timm, timm_hvt fails to import': ('editable', STUB_TIMM, STUB_BROKEN),
    'editable: stub timm, autoload off': ('editable', STUB_TIMM, dict(STUB, **OFF)),
}


def _purelib(python: Path) -> Path:
    """The site-packages of the environment whose interpreter is `python`."""
    return Path(subprocess.check_output(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], text=True).strip())


def _make_env(root: Path) -> Path:
    venv.create(root, with_pip=False, symlinks=True)
    python = root / 'bin' / 'python'
    # this environment's packages as a plain path: its own .pth files (our editable hook among them) stay inert
    (_purelib(python) / '_host_packages.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    return python


def _pip(*args: str, python: Path) -> None:
    # without PYTHONPATH: a timm-hvt found there (this checkout's metadata) would count as installed already
    subprocess.run([sys.executable, '-m', 'pip', '--python', str(python), *args, '--quiet', '--no-deps',
                    '--no-index', '--no-compile'], check=True, cwd=REPO, env=_clean_env())


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'TIMM_HVT_AUTOLOAD')}
    env.update(OMP_NUM_THREADS='1', **extra)
    return env


def _install(kind: str, tmp: Path, wheel: Path) -> tuple:
    python = _make_env(tmp / 'venv')
    if kind == 'regular':
        _pip('install', str(wheel), python=python)
    else:
        _pip('install', '--no-build-isolation', '--editable', str(REPO), python=python)
    (tmp / 'stub' / 'timm').mkdir(parents=True)
    (tmp / 'stub' / 'timm' / '__init__.py').write_text('STUB = True\n')
    (tmp / 'broken' / 'timm_hvt').mkdir(parents=True)
    (tmp / 'broken' / 'timm_hvt' / '__init__.py').write_text("raise RuntimeError('deliberately broken')\n")
    return python, tmp


def _run_case(python: Path, root: Path, name: str, code: str, extra: dict) -> subprocess.CompletedProcess:
    script = root / (re.sub(r'\W+', '_', name).strip('_') + '.py')
    script.write_text(PRELUDE + code)
    extra = {k: v.format(root=root) for k, v in extra.items()}
    return subprocess.run([python, script.name], cwd=root, env=_clean_env(**extra), capture_output=True, text=True,
                          timeout=240)


def _selected(request, param: str) -> set:
    """The values of `param` in this module's selected tests."""
    return {item.callspec.params[param] for item in request.session.items
            if item.module is request.module and param in getattr(getattr(item, 'callspec', None), 'params', {})}


@pytest.fixture(scope='module')
def installs(request, tmp_path_factory) -> dict:
    """{kind: (python, root)} for the installs this module's selected tests use (their `case` or `install`)."""
    kinds = {CASES[name][0] for name in _selected(request, 'case')} | _selected(request, 'install')
    wheel = request.getfixturevalue('release_artifacts')['wheel'] if 'regular' in kinds else None
    with ThreadPoolExecutor(2) as pool:
        futures = {kind: pool.submit(_install, kind, tmp_path_factory.mktemp(kind), wheel) for kind in kinds}
        return {kind: future.result() for kind, future in futures.items()}


@pytest.fixture(scope='module')
def started(request, installs):
    """The cases this module's selected tests ask for (their `case` parameter), started at once, a few at a time:
    name -> future of its CompletedProcess."""
    wanted = _selected(request, 'case')
    spawn = any(item.module is request.module and item.originalname == 'test_spawned_worker_sees_the_models'
                for item in request.session.items)
    pool = ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2)))
    yield {name: pool.submit(_run_case, *installs[kind], name, code, dict(extra, SPAWN_WORKER=str(int(spawn))))
           for name, (kind, code, extra) in CASES.items() if name in wanted}
    pool.shutdown(cancel_futures=True)


def _facts(started, name: str) -> dict:
    result = started[name].result()
    assert result.returncode == 0, f'{name}: exit {result.returncode}\n{result.stderr[-3000:]}'
    lines = [line for line in result.stdout.splitlines() if line.startswith('RESULT ')]
    assert lines, f'{name}: no result\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}'
    facts = json.loads(lines[-1][len('RESULT '):])
    assert facts.pop('heavy_at_start') == [], f'{name}: imported at start-up'
    assert facts.pop('hook_ran'), f'{name}: the start-up hook did not run'
    return facts


@pytest.mark.smoke
@pytest.mark.parametrize('case', [FRESH])
def test_probes_the_start_entry_point_and_transformers_first_do_not_disarm_the_hook(started, case):
    """find_spec / importlib.metadata probes import nothing; the .start file's entry point, run again on top of the
    .pth line (twice), arms nothing more; transformers probes optional packages when it is imported and imports
    neither timm nor timm_hvt; then `import timm.layers`, timm's first import, registers every model, once, and the
    finder removes itself. Also that the hook ran at start-up and imported nothing heavy (`_facts` checks this for
    every case: neither torch, timm, timm_hvt nor numpy is in sys.modules at start-up); what it costs in time is
    measured, not asserted: `python -X importtime`."""
    facts = _facts(started, case)
    assert facts['found']
    assert facts['after_probe'] == []  # the probes themselves imported nothing heavy
    assert facts['entry_points'] == ['_timm_hvt_autoload:install']
    assert facts['install'] == '_timm_hvt_autoload.install'
    assert facts['armed_before'] == facts['armed_after_start'] == 1
    # transformers is in the test extra; the floor environment has none
    assert facts['transformers_imported'] == (importlib.util.find_spec('transformers') is not None)
    assert facts['after_transformers'] == []
    assert facts['models'] == N_MODELS
    assert facts['hvt_warnings'] == []  # no model registered twice
    assert facts['model'] == 'HierarchicalVisionTransformer'
    assert facts['armed_after_import'] == 0  # its job done, the finder removed itself


@pytest.mark.smoke
@pytest.mark.parametrize('case', [FRESH])
def test_the_installed_package_imports_and_leaves_timm_as_it_was(started, installs, case):
    facts = _facts(started, case)
    assert installs['regular'][1] in Path(facts['package']).parents  # the copy pip installed, not the source tree
    assert facts['modules'] == sorted(m.name for m in pkgutil.iter_modules([str(REPO / 'timm_hvt')]))
    assert '_timm_hvt_autoload' not in facts['loaders'], 'timm keeps the wrapped loader'
    assert facts['models_after_reload'] == N_MODELS  # importlib.reload(timm)
    assert '_timm_hvt_autoload' not in facts['loaders_after_reload']


@pytest.mark.parametrize('case', [FRESH])
def test_spawned_worker_sees_the_models(started, case):
    """DataLoader workers and torchrun ranks start fresh interpreters: the hook has to run there too."""
    facts = _facts(started, case)
    assert facts['worker_before'] == []
    assert facts['worker_models'] == N_MODELS


@pytest.mark.parametrize('case', ['stub timm, the .pth line off, the start entry point alone'])
def test_the_start_entry_point_alone_arms_the_hook(started, case):
    facts = _facts(started, case)
    assert facts['armed_at_start'] == 0
    assert facts['stub']
    assert len(facts['warnings']) == 1 and 'deliberately broken' in facts['warnings'][0]  # timm_hvt was imported


@pytest.mark.parametrize('case', ['stub timm, autoload off', 'editable: stub timm, autoload off'])
def test_autoload_can_be_turned_off(started, case):
    facts = _facts(started, case)
    assert facts['stub']
    assert not facts['timm_hvt_imported']
    assert facts['warnings'] == []


@pytest.mark.parametrize('case', ['stub timm, timm_hvt fails to import',
                                  'editable: stub timm, timm_hvt fails to import'])
def test_import_timm_survives_a_broken_timm_hvt(started, case):
    """Also the counterpart of the off switch's test: with the hook on, the same stand-in timm triggers it."""
    facts = _facts(started, case)
    assert facts['stub']
    assert not facts['timm_hvt_imported']
    assert len(facts['warnings']) == 1 and 'deliberately broken' in facts['warnings'][0]


@pytest.mark.parametrize('case', ['editable: where the package and the hook come from'])
def test_editable_install_hooks_the_source_tree(started, installs, case):
    """The editable install's hook is armed at start-up and imports this checkout's timm_hvt (that an armed hook
    registers the models on `import timm` is the regular install's cases; the stand-in cases show the editable
    hook firing), and its site-packages holds both hook files."""
    facts = _facts(started, case)
    assert facts['armed'] == 1 and not facts['timm_imported']
    assert Path(facts['package']) == REPO / 'timm_hvt' / '__init__.py'
    assert Path(facts['hook_module']) == REPO / '_timm_hvt_autoload.py'
    python, _ = installs['editable']
    for hook in ('timm_hvt_autoload.pth', 'timm_hvt_autoload.start'):
        assert (_purelib(python) / hook).read_bytes() == (REPO / hook).read_bytes(), hook
    assert 'timm_hvt.cli' in (python.parent / 'timm-hvt').read_text()  # its console script


@pytest.mark.parametrize('install', ['regular'])
def test_console_script_is_installed(installs, install):
    """pip writes `timm-hvt` from the wheel's entry point (test_packaging.py checks the wheel declares it); the
    README's `timm-hvt` commands run it in an environment whose hook is on (test_readme.py), where the hook fires
    inside timm_hvt's own import, harmlessly."""
    python, _ = installs[install]
    assert 'timm_hvt.cli' in (python.parent / 'timm-hvt').read_text()


def test_hook_without_its_module_stays_silent(tmp_path):
    """An editable install whose source tree moved away leaves the .pth behind: start-up must not print a traceback."""
    python = _make_env(tmp_path / 'venv')
    (_purelib(python) / 'timm_hvt_autoload.pth').write_text((REPO / 'timm_hvt_autoload.pth').read_text())
    result = subprocess.run([python, '-c', 'import sys; print("_timm_hvt_autoload" in sys.modules)'], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == 'False'
    assert result.stderr == ''
