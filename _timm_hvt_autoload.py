"""Registers timm-hvt's models with timm as soon as timm is imported, without importing either one first.

At interpreter start-up, `install()` runs from the `timm_hvt_autoload.pth` file pip puts in site-packages or, on
Pythons that read PEP 829 start files, from `timm_hvt_autoload.start` beside it (the entry point
`_timm_hvt_autoload:install`; those Pythons then skip the `.pth` file's import line). It only adds a finder to
`sys.meta_path`, once however often it runs. When the import system asks that finder for `timm`, it returns the
spec the other finders would return with its loader wrapped, so that right after timm's own module has executed,
`timm_hvt` is imported (which registers the `hvt_*` models). Asking is not importing:
`importlib.util.find_spec('timm')` and the like (transformers probes optional packages that way) get such a spec
too, so the finder stays in place until timm has really been executed as `sys.modules['timm']`; only then does it
remove itself. The module's spec and loader are put back to timm's own before timm's code runs, so nothing of timm
stays modified. Set TIMM_HVT_AUTOLOAD=0 to turn all of this off.
"""
import os
import sys
from _thread import get_ident

__all__ = ['install']

_TARGET = 'timm'


class _AfterTimmImport:
    """Meta path finder: hands out timm's spec with a loader that imports `timm_hvt` after timm's module ran."""

    _timm_hvt_autoload = True  # marks this finder (a second copy of this module may define another class)

    def __init__(self):
        self._busy = set()  # threads inside find_spec: a finder below us asking for timm again gets None

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        if _TARGET in sys.modules:  # timm got in without us (or a reload): nothing left to do
            _remove(self)
            return None
        thread = get_ident()
        if thread in self._busy:
            return None
        self._busy.add(thread)
        try:
            spec = _find_with_the_others(self, fullname, path, target)
        finally:
            self._busy.discard(thread)
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module') \
                or _is_ours(spec.loader):
            return spec
        # a copy: the other finder may hand the same spec object out again
        wrapped = object.__new__(type(spec))
        wrapped.__dict__.update(spec.__dict__)
        wrapped.loader = _LoaderThenRegister(spec.loader, self)
        return wrapped


def _find_with_the_others(finder, fullname, path, target):
    for other in list(sys.meta_path):
        if other is finder or _is_ours(other):
            continue
        find_spec = getattr(other, 'find_spec', None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def _is_ours(obj) -> bool:
    return getattr(type(obj), '_timm_hvt_autoload', False) is True


def _remove(finder):
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass


class _LoaderThenRegister:
    _timm_hvt_autoload = True

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        loader = self._loader
        # timm's module gets timm's own loader back before any of its code runs
        spec = getattr(module, '__spec__', None)
        if spec is not None and spec.loader is self:
            spec.loader = loader
        if getattr(module, '__loader__', None) is self:
            module.__loader__ = loader
        loader.exec_module(module)
        if sys.modules.get(_TARGET) is not module:
            return  # executed by hand (not the import of `timm`): keep waiting for the real one
        _remove(self._finder)
        try:
            import timm_hvt  # noqa: F401  registers the models
        except Exception as e:  # never break `import timm` itself
            import warnings
            warnings.warn(f'timm-hvt: models not registered with timm ({type(e).__name__}: {e})', stacklevel=2)


def install() -> None:
    """Arm the finder (at most one, whatever called this before); nothing once timm is imported or when turned off."""
    if os.environ.get('TIMM_HVT_AUTOLOAD', '1').strip().lower() in ('0', 'false', 'no', 'off', ''):
        return
    if _TARGET in sys.modules:
        return
    if not any(_is_ours(f) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
