"""The loaded models compute what the paper describes: logits against an independent reference forward
(benchmarks/authors_hvt.py) on the authors'-layout state dict, directly, and for the variant with the most pooling
stages also after convert -> hub folder -> reload (the other variants' folders differ only in shapes and names;
test_convert.py reloads hvt_ti_1's)."""
import pytest
import timm
import torch

from benchmarks import authors_hvt as reference_hvt
from _weights_helpers import REVISION, caches, hub_id, pinned, save_authors_checkpoint
from timm_hvt.convert import convert_checkpoint

ATOL = 1e-5
pytestmark = pytest.mark.smoke  # also run at the lowest supported timm


@pytest.mark.parametrize('arch', ['hvt_ti_1', 'hvt_s_1', 'hvt_s_4'])
def test_logits_match_the_reference(arch, caches, tmp_path):
    source = tmp_path / f'{arch}.pth'
    sd = save_authors_checkpoint(source, arch, seed=11)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = reference_hvt.forward(sd, images)
    assert expected.abs().max() > 1  # logits of a scale where 1e-5 is a tight bound

    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(source))).eval()
    with torch.no_grad():
        direct = (model(images) - expected).abs().max().item()
    print(f'{arch}: max abs logits diff vs reference: direct {direct:.2e}')
    assert direct <= ATOL
    if arch != 'hvt_s_4':
        return

    folder = tmp_path / 'hub'
    convert_checkpoint(str(source), arch, str(folder))
    caches.put_hub_repo(hub_id(arch), {p.name: p for p in folder.iterdir()}, commit=REVISION)
    caches.offline()
    reloaded = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=pinned(arch)).eval()
    with torch.no_grad():
        round_trip = (reloaded(images) - expected).abs().max().item()
    print(f'{arch}: max abs logits diff vs reference after convert/hub/reload {round_trip:.2e}')
    assert round_trip <= ATOL

    # the comparison sees HVT's pooling stages: leaving out their position embeddings is far off
    unpooled = {k: (torch.zeros_like(v) if k.startswith('blocks.') and k.endswith('pos_embed') else v)
                for k, v in sd.items()}
    assert (reference_hvt.forward(unpooled, images) - expected).abs().max() > 100 * ATOL
