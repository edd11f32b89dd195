"""timm's own model test suite (tests/test_models.py of the installed timm's source distribution), run on HVT.

`hvt_*` is classified as timm classifies its ViTs (vit_*, deit_*): a non-standard model (its features have one
stride, not a pyramid) whose module has forward_intermediates() and a features_only getter, so that timm's
intermediates tests check the NCHW maps. Left out: the pretrained-download tests (network) and the pruning contract
test, which timm's own CI leaves out too (slow).
The sdist comes from the package registry once and is cached (TIMM_HVT_CACHE, default ~/.cache/timm-hvt); .ci/run
fetches it while the environments install, so that the test run itself stays offline.

The suite runs on two variants of the Ti width: hvt_ti_0 (no pooling stage: timm's ViT blocks only) and hvt_ti_1
(a pooling stage; it has a pretrained tag, which the config test takes as a model of its own), in one subprocess of
timm's suite (a few seconds per variant); the floor run (the lowest timm and torch) takes hvt_ti_1. The other
variants hold the same classes, more pooling blocks at other positions or another width: tests/test_hvt_model.py
checks those positions, the structure and a training step of all ten, and scripts, fx-traces and takes the NCHW
maps of a model with two pooling blocks in a row.
"""
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm
import torch

import timm_hvt  # noqa: F401

# every test of timm's suite that takes each model by name and runs for non-standard models
REQUIRED_TESTS = (
    'test_model_forward',
    'test_model_backward',
    'test_model_default_cfgs_non_std',
    'test_model_forward_torchscript',
    'test_model_forward_fx',
    'test_model_backward_fx',
    'test_model_forward_fx_torchscript',
    'test_model_forward_intermediates',
    'test_model_forward_intermediates_features',
)
# no pooling stage, and a pooling stage
VARIANTS = ('hvt_ti_0', 'hvt_ti_1')
SMOKE_VARIANTS = ('hvt_ti_1',)
# the tests that need the network to fetch pretrained weights
NETWORK_TESTS = ('test_model_load_pretrained', 'test_model_features_pretrained', 'test_model_inference')
LEFT_OUT = NETWORK_TESTS + ('test_prune_intermediate_layers_contract',)


def _cache_dir() -> Path:
    return Path(os.environ.get('TIMM_HVT_CACHE', Path.home() / '.cache' / 'timm-hvt'))


def _timm_sdist() -> Path:
    version = timm.__version__
    sdist_dir = _cache_dir() / 'timm-sdist'
    sdist = sdist_dir / f'timm-{version}.tar.gz'
    if not sdist.exists():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={version}', '--dest', str(sdist_dir)],
            check=True,
        )
    return sdist


def _classify_hvt(source: str) -> str:
    for marker, entry in (('NON_STD_FILTERS = [', "'hvt_*'"), ('FEAT_INTER_FILTERS = [', "'hvt'")):
        if source.count(marker) != 1:
            raise AssertionError(f"timm's test_models.py no longer defines {marker!r} exactly once")
        source = source.replace(marker, f'{marker}{entry}, ', 1)
    return source


@pytest.fixture(scope='module')
def timm_suite(tmp_path_factory) -> Path:
    suite_dir = tmp_path_factory.mktemp('timm_suite')
    with tarfile.open(_timm_sdist()) as tar:
        names = set(tar.getnames())
        for name in ('test_models.py', 'conftest.py'):
            if name == 'conftest.py' and f'timm-{timm.__version__}/tests/{name}' not in names:
                continue  # older timm releases (1.0.26) ship no tests/conftest.py
            member = tar.getmember(f'timm-{timm.__version__}/tests/{name}')
            source = tar.extractfile(member).read().decode()
            if name == 'test_models.py':
                source = _classify_hvt(source)
            (suite_dir / name).write_text(source)
    return suite_dir


@pytest.fixture(scope='module')
def suite_outcomes(request, timm_suite):
    """Runs timm's suite once, in one subprocess, on every variant this module's selected tests ask for; returns
    {test case name: 'passed' / 'failure' / 'error' / 'skipped'}."""
    selected = sorted({item.callspec.params['model'] for item in request.session.items
                       if item.module is request.module and hasattr(item, 'callspec')})
    report = timm_suite / 'report.xml'
    select = ' or '.join(selected)  # also selects the tagged names, e.g. hvt_ti_1.in1k
    deselect = ' and '.join(f'not {t}' for t in LEFT_OUT)
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', 'test_models.py', '-q', '-p', 'no:cacheprovider',
         '-k', f'({select}) and {deselect}', f'--junitxml={report}'],
        cwd=timm_suite, capture_output=True, text=True, timeout=420,
        # as many threads as this process: one per pytest-xdist worker (tests/conftest.py), whose cores it shares
        env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())),
    )
    assert proc.returncode == 0, f'timm suite failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}'

    outcomes = {}
    for case in ET.parse(report).getroot().iter('testcase'):
        status = 'passed'
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                status = child.tag
        outcomes[case.get('name')] = status
    others = [case for case in outcomes if not any(case.endswith(f'-{m}]') or f'-{m}.' in case for m in selected)]
    assert not others, f'other models ran: {others}'
    return outcomes


def test_the_variants_run_without_and_with_pooling():
    with torch.device('meta'):
        counts = {m: len(timm.create_model(m).pool_blocks) for m in VARIANTS}
    assert counts['hvt_ti_0'] == 0 and counts['hvt_ti_1'] > 0
    assert set(SMOKE_VARIANTS) <= set(VARIANTS)
    assert all(counts[m] for m in SMOKE_VARIANTS)  # the pooling block runs at the floors
    # a variant with a pretrained tag in both runs: the config test takes the tag as a model of its own
    assert {m.split('.')[0] for m in timm.list_pretrained('hvt_*')} & set(SMOKE_VARIANTS)


@pytest.mark.timeout(450)
@pytest.mark.parametrize('model', [pytest.param(m, marks=pytest.mark.smoke) if m in SMOKE_VARIANTS else m
                                   for m in VARIANTS])
def test_timm_model_suite_passes(model, suite_outcomes):
    # the config test takes every pretrained tag as a model of its own (hvt_ti_1.in1k), the others the bare name
    tagged = {'test_model_default_cfgs_non_std': [
        m for m in timm.list_models('hvt_*', include_tags=True) if m.split('.')[0] == model]}
    batch = {'test_model_backward': 2, 'test_model_backward_fx': 2}
    missing, not_passed = [], []
    for test in REQUIRED_TESTS:
        for name in tagged.get(test, [model]):
            case = f'{test}[{batch.get(test, 1)}-{name}]'
            if case not in suite_outcomes:
                missing.append(case)
            elif suite_outcomes[case] != 'passed':
                not_passed.append(f'{case}: {suite_outcomes[case]}')
    assert not missing, f'expected tests were not collected: {missing}'
    assert not not_passed, f'tests did not pass: {not_passed}'
