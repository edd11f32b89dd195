"""Evaluation preprocessing: the transform timm builds from an HVT model's pretrained cfg equals the authors'.

The authors evaluated as DeiT does: resize the short side to 224 / 0.875 = 256 (bicubic), center crop 224, to a
tensor, normalize with the ImageNet mean / std (the authors' evaluation script, built on DeiT's). That pipeline is
written here with torchvision alone and compared, on real photos shipped with scikit-image (a square one and a
non-square one), with `timm.data.create_transform(**timm.data.resolve_data_config(model=model))` for a Ti and an S model
(every variant carries the same data fields: tests/test_hvt_model.py). Both sides get the same PIL image, as both
pipelines would in practice.
"""
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torchvision import transforms

import timm

INPUT_SIZE = 224
CROP_PCT = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# scikit-image's bundled photos: astronaut is 512x512, chelsea (a cat) 300 rows x 451 columns
PHOTOS = {'astronaut_square': skimage_data.astronaut, 'chelsea_landscape': skimage_data.chelsea}


def authors_eval_transform(input_size: int = INPUT_SIZE, crop_pct: float = CROP_PCT) -> transforms.Compose:
    """DeiT / HVT evaluation: short side to input_size / crop_pct (bicubic), center crop, ToTensor, Normalize."""
    resize_to = int(input_size / crop_pct)
    return transforms.Compose([
        transforms.Resize(resize_to, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def timm_eval_transform(model_name: str):
    with torch.device('meta'):  # only the pretrained cfg is needed, not the weights
        model = timm.create_model(model_name)
    config = timm.data.resolve_data_config(model=model)
    return timm.data.create_transform(**config), config


@pytest.fixture(scope='module', params=list(PHOTOS))
def photo(request) -> Image.Image:
    return Image.fromarray(PHOTOS[request.param]())


def test_photos_are_real_rgb_and_one_is_not_square():
    sizes = {name: Image.fromarray(load()).size for name, load in PHOTOS.items()}
    assert sizes == {'astronaut_square': (512, 512), 'chelsea_landscape': (451, 300)}
    assert all(Image.fromarray(load()).mode == 'RGB' for load in PHOTOS.values())


@pytest.mark.parametrize('model_name', ['hvt_ti_1', 'hvt_s_4'])
def test_timm_eval_transform_equals_the_authors_pipeline(model_name, photo):
    transform, config = timm_eval_transform(model_name)
    assert config['input_size'] == (3, INPUT_SIZE, INPUT_SIZE)
    ours = transform(photo)
    reference = authors_eval_transform()(photo)
    assert ours.shape == reference.shape == (3, INPUT_SIZE, INPUT_SIZE)
    assert ours.dtype == reference.dtype == torch.float32
    diff = (ours - reference).abs().max().item()
    assert diff <= 1e-6, f'{model_name}: max abs diff {diff:.2e} from the authors\' evaluation transform'


def test_comparison_sees_a_wrong_crop_or_interpolation(photo):
    """Control: the photos are detailed enough that a different crop fraction or interpolation changes the tensor,
    so the equality above pins both down (and not only the output size)."""
    reference = authors_eval_transform()(photo)
    no_crop_margin = authors_eval_transform(crop_pct=1.0)(photo)
    bilinear = transforms.Compose([
        transforms.Resize(int(INPUT_SIZE / CROP_PCT), interpolation=transforms.InterpolationMode.BILINEAR),
        *authors_eval_transform().transforms[1:],
    ])(photo)
    for other in (no_crop_margin, bilinear):
        assert other.shape == reference.shape
        assert (other - reference).abs().max().item() > 0.05
