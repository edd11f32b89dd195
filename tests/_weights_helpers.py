"""Offline stand-ins for where pretrained weights come from: a Hugging Face cache and a torch hub cache in temp
dirs (in the libraries' real layouts), a loopback "hub" that answers like a missing repo / file and serves release
files, and a guard that fails any download aimed anywhere but 127.0.0.1."""
import argparse
import hashlib
import http.server
import os
import pickle
import socket
import threading
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import pytest
import torch

from benchmarks import authors_hvt as reference_hvt


def hub_id(arch: str) -> str:
    """The project's hub repo of `arch`'s released weights, unpinned."""
    from timm.models import get_pretrained_cfg
    return get_pretrained_cfg(f'{arch}.in1k').hf_hub_id.partition('@')[0]


REVISION = 'a' * 40  # the commit a published tag's row pins


def pinned(arch: str) -> dict:
    """The pretrained cfg overlay of a published, pinned tag: its hub repo at REVISION."""
    return dict(hf_hub_id=f'{hub_id(arch)}@{REVISION}')


def release_url(arch: str) -> str:
    from timm.models import get_pretrained_cfg
    return get_pretrained_cfg(f'{arch}.in1k').url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@dataclass
class Caches:
    """Where this test's weights live; `offline()` and `endpoint()` switch the hub's reachability."""
    root: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def hf(self) -> Path:
        return self.root / 'hf'

    @property
    def torch_checkpoints(self) -> Path:
        return self.root / 'torch' / 'hub' / 'checkpoints'

    def offline(self, value: bool = True) -> None:
        from huggingface_hub import constants
        self.monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', value)

    def endpoint(self, url: str) -> None:
        from huggingface_hub import constants
        self.monkeypatch.setattr(constants, 'ENDPOINT', url)
        self.monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
        import huggingface_hub.file_download as file_download
        if hasattr(file_download, 'HUGGINGFACE_CO_URL_TEMPLATE'):  # huggingface_hub < 1.0 binds it at import
            self.monkeypatch.setattr(
                file_download, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')

    def hub_snapshot(self, repo_id: str, commit: Optional[str] = None) -> Path:
        """The folder of `put_hub_repo`'s files for `repo_id` (the paths hf_hub_download returns)."""
        commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
        return self.hf / ('models--' + repo_id.replace('/', '--')) / 'snapshots' / commit

    def put_hub_repo(self, repo_id: str, files: Dict[str, Union[bytes, Path]], commit: Optional[str] = None) -> Path:
        """Lay `files` out as huggingface_hub caches a repo: blobs/, snapshots/<commit>/ links, refs/main."""
        snapshot = self.hub_snapshot(repo_id, commit)
        repo_dir = snapshot.parents[1]
        commit = snapshot.name
        (repo_dir / 'blobs').mkdir(parents=True, exist_ok=True)
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            data = Path(content).read_bytes() if isinstance(content, Path) else content
            blob = repo_dir / 'blobs' / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / name
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(os.path.relpath(blob, snapshot))
        (repo_dir / 'refs').mkdir(exist_ok=True)
        (repo_dir / 'refs' / 'main').write_text(commit)
        return snapshot

    def put_release(self, url: str, content: Union[bytes, Path]) -> Path:
        """Place a release file where torch.hub caches the download of `url`."""
        self.torch_checkpoints.mkdir(parents=True, exist_ok=True)
        path = self.torch_checkpoints / url.rsplit('/', 1)[-1]
        path.write_bytes(Path(content).read_bytes() if isinstance(content, Path) else content)
        return path


def _no_sleep_time_module() -> types.SimpleNamespace:
    names = {k: getattr(time, k) for k in dir(time) if not k.startswith('_')}
    return types.SimpleNamespace(**dict(names, sleep=lambda seconds: None))


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Caches:
    """Empty HF and torch hub caches in tmp_path; the hub endpoint on a closed loopback port, retries instant, and
    any non-loopback download an error."""
    import huggingface_hub.utils._http as hf_http
    from huggingface_hub import constants

    c = Caches(tmp_path / 'caches', monkeypatch)
    c.hf.mkdir(parents=True)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'caches' / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(c.hf))
    c.offline(False)
    c.endpoint(f'http://127.0.0.1:{closed_port()}')
    monkeypatch.setattr(hf_http, 'time', _no_sleep_time_module())

    download = torch.hub.download_url_to_file

    def loopback_only(url, *args, **kwargs):
        if not url.startswith('http://127.0.0.1:'):
            raise AssertionError(f'test tried to download {url}')
        return download(url, *args, **kwargs)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', loopback_only)
    return c


class _FakeHubHandler(http.server.BaseHTTPRequestHandler):
    server: 'FakeHub'

    def _answer(self, with_body: bool) -> None:
        self.server.requests.append(f'{self.command} {self.path}')
        body = self.server.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header('X-Error-Code', self.server.error_code)
            self.send_header('X-Error-Message', 'not found')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        # what huggingface_hub reads off a file of a repo: the commit it belongs to and the file's hash
        self.send_header('X-Repo-Commit', hashlib.sha1(self.path.encode()).hexdigest())
        self.send_header('ETag', f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def log_message(self, *args) -> None:
        pass


class FakeHub(http.server.ThreadingHTTPServer):
    """A loopback server: every hub path answers 404 with `error_code` (RepoNotFound / EntryNotFound, as the
    real hub does); paths put in `files` are served as downloads (a hub repo's file at
    '/<repo_id>/resolve/main/<file name>')."""

    def __init__(self, error_code: str = 'RepoNotFound') -> None:
        super().__init__(('127.0.0.1', 0), _FakeHubHandler)
        self.error_code = error_code
        self.files: Dict[str, bytes] = {}
        self.requests: List[str] = []

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}'


@contextmanager
def fake_hub(error_code: str = 'RepoNotFound') -> Iterator[FakeHub]:
    server = FakeHub(error_code)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# routing tests don't need 12 blocks: a 2-block hvt_ti_1 builds in a fraction of the time
TINY = dict(depth=2)


def save_authors_checkpoint(path: Path, arch: str, seed: int = 0, **sd_kwargs) -> Dict[str, torch.Tensor]:
    """Write a random checkpoint the way the authors' training script saves one; return its state dict."""
    sd = reference_hvt.random_state_dict(arch, seed=seed, **sd_kwargs)
    args = dict(num_blocks=sd_kwargs['depth']) if 'depth' in sd_kwargs else {}
    torch.save(reference_hvt.authors_checkpoint(sd, arch, **args), path)
    return sd


def save_hub_weights(path: Path, state_dict: Dict[str, torch.Tensor]) -> Path:
    import safetensors.torch
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def assert_weights(model: torch.nn.Module, expected: Dict[str, torch.Tensor], keys=None) -> None:
    own = model.state_dict()
    for k in keys or expected:
        assert torch.equal(own[k], expected[k]), f'{k} differs from the expected source'


class RunsCommand:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def save_malicious_checkpoint(path: Path, marker: Path, arch: str = 'hvt_ti_1', **sd_kwargs) -> None:
    """An authors'-layout checkpoint whose 'args' Namespace hides an object that would `touch marker`."""
    sd = reference_hvt.random_state_dict(arch, seed=0, **sd_kwargs)
    checkpoint = reference_hvt.authors_checkpoint(sd, arch)
    checkpoint['args'] = argparse.Namespace(**vars(checkpoint['args']), hook=RunsCommand(f'touch {marker}'))
    torch.save(checkpoint, path)


def unpickle_without_safeguards(path: Path) -> None:
    """Plain pickle on the checkpoint's data.pkl: the control showing a malicious fixture really runs code."""
    import zipfile
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith('data.pkl')))

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

        def find_class(self, module, name):
            if module.split('.')[0] == 'torch':  # tensors: their storages are not read here
                return lambda *args, **kwargs: None
            return super().find_class(module, name)

    import io
    Unpickler(io.BytesIO(data)).load()


def offline_env(root: Path) -> Dict[str, str]:
    """Environment for a subprocess that must not reach any network: offline hub, caches under root."""
    return {
        'HF_HUB_OFFLINE': '1',
        'HF_HUB_CACHE': str(root / 'hf'),
        'TORCH_HOME': str(root / 'torch'),
        'HF_ENDPOINT': f'http://127.0.0.1:{closed_port()}',
        'HF_HUB_DISABLE_TELEMETRY': '1',
    }
