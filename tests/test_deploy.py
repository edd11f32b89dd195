"""The CPU routes README.md's "Deploy on CPU" documents, on a tiny HVT: converted, saved and loaded, OpenVINO at f32
precision gives eager fp32's logits at any batch, ONNX Runtime at any image size of a `dynamic_img_size` model; the
INT8 recipe (NNCF, the classifier left in fp32, no SmoothQuant) quantizes every other matmul and runs."""
import numpy as np
import pytest
import timm
import torch

import nncf
import onnxruntime as ort
import openvino as ov

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py

TINY = dict(depth=2, embed_dim=64, num_heads=2)  # two pooling stages over 196 patches


def relative_diff(out: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.abs(out - ref.numpy()).max() / ref.abs().max())


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A tiny HVT and its OpenVINO model, converted for any batch and saved with fp32 weights, as the README does."""
    torch.manual_seed(0)
    model = timm.create_model('hvt_ti_2', **TINY).eval()
    path = tmp_path_factory.mktemp('openvino') / 'hvt.xml'
    ov_model = ov.convert_model(model, example_input=torch.randn(1, 3, 224, 224), input=[-1, 3, 224, 224])
    ov.save_model(ov_model, path, compress_to_fp16=False)
    return model, path


def test_openvino_f32_matches_eager_at_any_batch(saved):
    model, path = saved
    compiled = ov.compile_model(path, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    for batch in (1, 5):
        x = torch.randn(batch, 3, 224, 224)
        assert relative_diff(compiled(x.numpy())[0], eager(model, x)) < 1e-5, batch


def test_onnxruntime_matches_eager_at_any_image_size(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('hvt_ti_2', dynamic_img_size=True, **TINY).eval()
    size = torch.export.Dim.AUTO
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), tmp_path / 'hvt.onnx',
                      dynamic_shapes=({0: size, 2: size, 3: size},))
    session = ort.InferenceSession(tmp_path / 'hvt.onnx')
    for shape in ((2, 3, 224, 224), (1, 3, 160, 288)):  # 14 x 14 and 10 x 18 patches
        x = torch.randn(shape)
        assert relative_diff(session.run(None, {'x': x.numpy()})[0], eager(model, x)) < 1e-5, shape


def test_int8_recipe_keeps_the_classifier_in_fp32(saved):
    model, path = saved
    images = [torch.randn(1, 3, 224, 224).numpy() for _ in range(4)]
    int8 = nncf.quantize(
        ov.Core().read_model(path), nncf.Dataset(images), model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(patterns=['__module.head/.*']),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)))
    matmuls = [op for op in int8.get_ordered_ops() if op.get_type_name() == 'MatMul']
    weights = [op.input(1).get_source_output().get_node() for op in matmuls]
    # every linear layer's weights come dequantized from int8 but the last one's, the classifier's (10 of them)
    assert [w.get_type_name() for w in weights] == ['Multiply'] * 8 + ['Constant']
    assert weights[-1].get_element_type() == ov.Type.f32 and weights[-1].get_output_shape(0) == [1000, 64]
    assert any(op.get_type_name() == 'FakeQuantize' for op in int8.get_ordered_ops())
    compiled = ov.compile_model(int8, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    for batch in (1, 3):
        x = torch.randn(batch, 3, 224, 224)
        assert relative_diff(compiled(x.numpy())[0], eager(model, x)) < 0.5, batch
