"""Export: torch.export and ONNX (run with onnxruntime) give the eager outputs, with a dynamic batch.

Each model is captured once with torch.export (batch dimension symbolic); the ONNX model is translated from that
same ExportedProgram by torch.onnx.export (the dynamo exporter), checked with onnx.checker and run in onnxruntime.
Outputs must match eager within RTOL of the largest logit: the other runtime's kernels round differently, so the
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
