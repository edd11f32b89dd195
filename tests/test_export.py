"""Export: torch.export and ONNX (run with onnxruntime) give the eager outputs within 1e-4, with a dynamic batch.

Each model is captured once with torch.export (batch dimension symbolic); the ONNX model is translated from that
same ExportedProgram by torch.onnx.export (the dynamo exporter), checked with onnx.checker and run in onnxruntime.
Needs the `test` extra: onnx, onnxscript, onnxruntime.
"""
import numpy as np
import pytest
import torch

import timm

onnx = pytest.importorskip('onnx', reason='install the test extra: pip install timm-hvt[test]')
ort = pytest.importorskip('onnxruntime', reason='install the test extra: pip install timm-hvt[test]')
pytest.importorskip('onnxscript', reason='install the test extra: pip install timm-hvt[test]')

ATOL = 1e-4
CASES = {
    # the paper's HVT-Ti-1 at 224: one pooling stage, 196 -> 97 tokens
    'hvt_ti_1': ('hvt_ti_1', {}),
    # four pooling stages (196 -> 97 -> 48 -> 23 -> 11), the widest variant
    'hvt_s_4': ('hvt_s_4', {}),
    # class token kept out of the pooling and read by the head, position embeddings resampled on the fly
    'hvt_ti_2_cls_dynamic': ('hvt_ti_2', dict(img_size=96, class_token=True, global_pool='token',
                                              dynamic_img_size=True)),
}


@pytest.fixture(autouse=True)
def one_thread():
    """OpenMP (and onnxruntime) threads that wait on a busy core slow everything
    down many times over on a shared 2-core machine; run these tests on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module', params=list(CASES))
def exported(request):
    name, kwargs = CASES[request.param]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():  # logits of a random head are small; make them O(1) so 1e-4 is a strict bound
        model.head.weight.mul_(20.)
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
        diff = (out - ref).abs().max().item()
        print(f'torch.export {name} batch {x.shape[0]}: max abs diff {diff:.2e} (|logits| max '
              f'{ref.abs().max().item():.2f})')
        assert diff <= ATOL


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
        diff = float(np.abs(out - ref).max())
        print(f'onnxruntime {name} batch {x.shape[0]}: max abs diff {diff:.2e}')
        assert diff <= ATOL
