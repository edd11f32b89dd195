"""Uploading a hub folder written by `timm-hvt convert` to the Hugging Face Hub."""
import json
import os
from typing import List, Optional, Tuple

import timm
from timm.models import load_state_dict

from .convert import HUB_FOLDER_FILES

__all__ = ['check_hub_folder', 'push_folder']


def check_hub_folder(folder: str) -> List[Tuple[str, int]]:
    """The files (name, bytes) of a hub folder, after checking it is one `timm-hvt convert` writes."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{folder} not found: expected a folder written by `timm-hvt convert`')
    missing = [name for name in HUB_FOLDER_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f'{folder} lacks {", ".join(missing)}; write it with `timm-hvt convert`')
    with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
        arch = json.load(f).get('architecture')
    if not (isinstance(arch, str) and arch.startswith('hvt_') and timm.is_model(arch)):
        raise ValueError(f'{folder}/config.json names architecture {arch!r}, not a registered HVT model')
    load_state_dict(os.path.join(folder, 'model.safetensors'))  # raises on a truncated or corrupt file
    return [(name, os.path.getsize(os.path.join(folder, name))) for name in HUB_FOLDER_FILES]


def push_folder(
        folder: str,
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Upload HVT weights converted by timm-hvt',
        dry_run: bool = False,
) -> Tuple[List[Tuple[str, int]], Optional[str]]:
    """Upload a hub folder's files to `repo_id` (created if needed); the token comes from the HF environment /
    login. Returns the files (name, bytes) and the commit made (None for a `dry_run`, which only checks the
    folder)."""
    files = check_hub_folder(folder)
    if dry_run:
        return files, None
    from huggingface_hub import HfApi
    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=[name for name, _ in files],
                               commit_message=commit_message, revision=revision)
    return files, commit.oid
