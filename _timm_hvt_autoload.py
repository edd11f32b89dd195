"""Registers timm-hvt's models with timm as soon as timm is imported, without importing either one first.

The `timm_hvt_autoload.pth` file pip puts in site-packages runs `install()` at interpreter start-up. It only adds
a finder to `sys.meta_path`; when some later `import timm` finishes, the finder imports `timm_hvt`, which
registers the `hvt_*` models. Set TIMM_HVT_AUTOLOAD=0 to turn this off.
"""
import os
import sys

__all__ = ['install']


class _AfterTimmImport:
    """Meta path finder that wraps timm's loader so `timm_hvt` is imported right after timm itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec with the other finders
        import importlib.util
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _LoaderThenRegister(spec.loader)
        return spec


class _LoaderThenRegister:
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            import timm_hvt  # noqa: F401  registers the models
        except Exception as e:  # never break `import timm` itself
            import warnings
            warnings.warn(f'timm-hvt: models not registered with timm ({type(e).__name__}: {e})', stacklevel=2)


def install() -> None:
    if os.environ.get('TIMM_HVT_AUTOLOAD', '1').strip().lower() in ('0', 'false', 'no', 'off', ''):
        return
    if 'timm' in sys.modules:
        return
    if not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
