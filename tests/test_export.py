"""Export: torch.export and ONNX (run with onnxruntime) give the eager outputs, with a dynamic batch; TorchScript,
FX and torch.export of a `dynamic_img_size` model give them at any input size.

Each model is captured once with torch.export (batch dimension symbolic); the ONNX model is translated from that
same ExportedProgram by torch.onnx.export (the dynamo exporter), checked with onnx.checker and run in onnxruntime.
The dynamic-size model, as a classifier and as a `features_only` backbone (NCHW maps on the patch grid), is scripted
(built under timm's set_scriptable), traced (torch.fx.symbolic_trace, and timm's create_feature_extractor for the
classifier) and exported with a symbolic batch, height and width, each run at a square and a non-square size.
Outputs must match eager within RTOL of their largest value: the other runtime's kernels round differently, so the
bound is relative to the size of the values.
Needs the `test` extra (onnx, onnxscript, onnxruntime); without it these tests fail, they do not skip.
"""
import numpy as np
import onnx
import onnxruntime as ort
import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it; imported here to fail early)
import pytest
import torch

import timm
from timm.layers import set_scriptable
from timm.models import create_feature_extractor

RTOL = 1e-4
CASES = {
    # a whole variant at 224 with four pooling stages, 196 -> 97 -> 48 -> 23 -> 11 tokens (hvt_s_4's pooling at a
    # quarter of its width; the exporters' cost grows with the number of nodes, so one full-depth case only)
    'hvt_ti_4': ('hvt_ti_4', {}),
    # class token kept out of the pooling and read by the head, position embeddings resampled on the fly
    # (4 blocks, pooled after blocks 0 and 2)
    'hvt_ti_2_cls_dynamic': ('hvt_ti_2', dict(img_size=96, depth=4, class_token=True, global_pool='token',
                                              dynamic_img_size=True)),
}


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


@pytest.fixture(scope='module', params=list(CASES))
def exported(request):
    name, kwargs = CASES[request.param]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    size = model.pretrained_cfg['input_size'][-1] if 'img_size' not in kwargs else kwargs['img_size']
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim('batch', min=1, max=64)
    program = torch.export.export(model, (example,), dynamic_shapes={'x': {0: batch}})
    return request.param, model, program, size


def _inputs(size, batches=(1, 3, 7)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, size, size, generator=g) for b in batches]


@pytest.mark.smoke  # also run at the dependency floors
def test_torch_export_matches_eager_dynamic_batch(exported):
    name, model, program, size = exported
    batch_dim = program.graph_module.graph.find_nodes(op='placeholder')[-1].meta['val'].shape[0]
    assert isinstance(batch_dim, torch.SymInt), 'batch dimension was specialised'
    module = program.module()
    for x in _inputs(size):
        with torch.no_grad():
            ref, out = model(x), module(x)
        assert out.shape == ref.shape == (x.shape[0], model.num_classes)
        diff, scale = (out - ref).abs().max().item(), ref.abs().max().item()
        print(f'torch.export {name} batch {x.shape[0]}: max abs diff {diff:.2e} (|logits| max {scale:.2f})')
        assert diff <= RTOL * scale


@pytest.mark.smoke  # also run at the dependency floors
def test_onnx_onnxruntime_matches_eager_dynamic_batch(exported, tmp_path):
    name, model, program, size = exported
    path = str(tmp_path / f'{name}.onnx')
    onnx_program = torch.onnx.export(program, dynamo=True)
    onnx_program.save(path)
    onnx.checker.check_model(path)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert not isinstance(inp.shape[0], int), f'ONNX batch dimension is fixed: {inp.shape}'
    assert inp.shape[1:] == [3, size, size]
    for x in _inputs(size):
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run([outp.name], {inp.name: x.numpy()})[0]
        assert out.shape == ref.shape
        diff, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
        print(f'onnxruntime {name} batch {x.shape[0]}: max abs diff {diff:.2e} (|logits| max {scale:.2f})')
        assert diff <= RTOL * scale


# 4 blocks pooled after blocks 0 and 2, built for 96x96 (a 6x6 patch grid) and run at 6x6 and 4x8
DYNAMIC_SIZES = ((96, 96), (64, 128))
# the classifier, and a backbone of the same blocks: NCHW maps on the patch grid of blocks 0 (pooled once) and 3
# (pooled twice), with a class token kept off the grid
DYNAMIC_MODELS = {
    'logits': dict(num_classes=10),
    'maps': dict(features_only=True, out_indices=(0, 3), class_token=True),
}


@pytest.fixture(scope='module', params=list(DYNAMIC_MODELS))
def dynamic_model(request):
    torch.manual_seed(0)
    with set_scriptable(True):
        model = timm.create_model(
            'hvt_ti_2', img_size=96, depth=4, dynamic_img_size=True, **DYNAMIC_MODELS[request.param]).eval()
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, 3, h, w, generator=g) for h, w in DYNAMIC_SIZES]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    if request.param == 'maps':
        assert [[tuple(m.shape) for m in maps] for maps in expected] == [[(2, 192, 6, 6)] * 2, [(2, 192, 4, 8)] * 2]
    return model, inputs, expected


def _assert_matches_eager(what, outputs, expected):
    for x, out, ref in zip(DYNAMIC_SIZES, outputs, expected):
        for o, r in zip(*((out, ref) if isinstance(ref, list) else ([out], [ref]))):
            assert o.shape == r.shape
            diff, scale = (o - r).abs().max().item(), r.abs().max().item()
            print(f'{what} at {x[0]}x{x[1]}: max abs diff {diff:.2e} (|output| max {scale:.2f})')
            assert diff <= RTOL * scale


def test_torchscript_at_any_size(dynamic_model):
    model, inputs, expected = dynamic_model
    scripted = torch.jit.script(model)
    with torch.no_grad():
        _assert_matches_eager('TorchScript', [scripted(x) for x in inputs], expected)
    with pytest.raises((ValueError, torch.jit.Error), match='2x2'):  # the size check is scripted too: 2x2 is too few
        scripted(torch.randn(1, 3, 32, 32))


def test_fx_at_any_size(dynamic_model):
    model, inputs, expected = dynamic_model
    graphs = [torch.fx.symbolic_trace(model)]
    with torch.no_grad():
        _assert_matches_eager('torch.fx', [graphs[0](x) for x in inputs], expected)
    if hasattr(model, 'head'):  # timm's FX feature extraction reads the classifier's nodes
        graphs.append(create_feature_extractor(model, return_nodes={'head': 'logits'}))
        with torch.no_grad():
            _assert_matches_eager('create_feature_extractor', [graphs[1](x)['logits'] for x in inputs], expected)
    for graph in graphs:
        with pytest.raises(ValueError, match='2x2'):
            graph(torch.randn(1, 3, 32, 32))


def test_torch_export_at_any_size(dynamic_model):
    model, inputs, expected = dynamic_model
    # timm's PatchEmbed takes whole patches only (no dynamic padding): height and width in multiples of 16
    dims = {0: torch.export.Dim('batch', min=1, max=64), 2: 16 * torch.export.Dim('rows', min=3, max=32),
            3: 16 * torch.export.Dim('columns', min=3, max=32)}
    program = torch.export.export(model, (torch.randn(2, 3, 80, 112),), dynamic_shapes={'x': dims})
    shape = program.graph_module.graph.find_nodes(op='placeholder')[-1].meta['val'].shape
    assert all(isinstance(shape[i], torch.SymInt) for i in dims), f'specialised: {shape}'
    module = program.module()
    with torch.no_grad():
        _assert_matches_eager('torch.export', [module(x) for x in inputs], expected)
