"""KServe v2 with the models' own tensors: every datatype, over REST (JSON and binary) and gRPC
(raw and typed contents), with ``tritonclient`` as Triton users write it and raw bodies; every
answer equals the frozen graph's own (``tests.tensor_models.run_frozen``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from app.services import services_of  # noqa: E402
from tests.digits import png_bytes  # noqa: E402
from tests.server import running  # noqa: E402
from tests.tensor_models import ALL_DTYPES, run_frozen, write_alltypes, write_half_plus_two, write_multi  # noqa: E402

V2 = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
      "int64": "INT64", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
      "bool": "BOOL", "string": "BYTES"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, graphs_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("tensor_graphs")
    write_alltypes(folder)
    write_multi(folder)
    try:
        write_half_plus_two(folder)
    except pytest.skip.Exception:
        pass  # ../shared/testdata is not there: the half_plus_two test skips itself
    _write_typed(folder)
    for name in ("digits8", "digits16"):
        shutil.copytree(graphs_dir / name, folder / name)
    return folder


def _write_typed(root: Path) -> None:
    """alltypes without FP16: every input fits a typed gRPC ``contents`` field."""
    import tensorflow as tf

    graph = tf.Graph()
    inputs, outputs = {}, {}
    with graph.as_default():
        for dtype in ALL_DTYPES[1:]:
            shape = [None] if dtype == "string" else [None, 2]
            tf.identity(tf.compat.v1.placeholder(tf.as_dtype(dtype), shape, name=f"in_{dtype}"), name=f"out_{dtype}")
            listed = [-1] if dtype == "string" else [-1, 2]
            inputs[f"in_{dtype}"] = {"tensor": f"in_{dtype}:0", "dtype": dtype, "shape": listed}
            outputs[f"out_{dtype}"] = {"tensor": f"out_{dtype}:0", "dtype": dtype, "shape": listed}
    folder = root / "typed" / "1"
    folder.mkdir(parents=True)
    (folder / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (folder / "model.json").write_text(json.dumps({"signatures": {"serving_default": {
        "inputs": inputs, "outputs": outputs}}}), encoding="utf-8")


@pytest.fixture(scope="module")
def tensor_app(root: Path):
    from app import create_app

    application = create_app({"GRAPHS_DIR": str(root)})
    yield application
    services_of(application).registry.close()


@pytest.fixture(scope="module")
def url(tensor_app):
    with running(tensor_app, threads=4) as base:
        yield base


@pytest.fixture(scope="module")
def port(tensor_app):
    from app.grpc_server import start_grpc_server

    server, bound = start_grpc_server(tensor_app)
    yield bound
    server.stop(None)


@pytest.fixture(scope="module")
def http_client(url):
    client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(port):
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(port):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _values(dtype: str) -> np.ndarray:
    """Two rows of each dtype's edge values (strings: UTF-8 text and raw bytes)."""
    if dtype == "string":
        return np.array([b"caf\xc3\xa9", b""], dtype=object)
    if dtype == "bool":
        return np.array([[True, False], [False, True]])
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    return np.array([[info.min, info.max], [0, 1 if dtype.startswith("u") else -1]], dtype=dtype)


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return {f"in_{dtype}": _values(dtype) for dtype in ALL_DTYPES}


@pytest.fixture(scope="module")
def reference(root, feeds) -> dict[str, np.ndarray]:
    return run_frozen(root / "alltypes" / "1", "serving_default", feeds)


def _equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert [bytes(v) for v in got.flat] == [bytes(v) for v in want.flat]
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _json_data(array: np.ndarray) -> list:
    if array.dtype == object:
        return [bytes(v).decode("utf-8") for v in array.flat]
    return array.tolist()  # nested, row-major: v2 allows it


def test_metadata_lists_the_signature(http_client, grpc_client):
    metadata = http_client.get_model_metadata("alltypes")
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs == {f"in_{d}": (V2[d], [-1, 1] if d == "string" else [-1, 2]) for d in ALL_DTYPES}  # [-1]: [-1, 1]
    assert {t["name"] for t in metadata["outputs"]} == {f"out_{d}" for d in ALL_DTYPES}
    digits = http_client.get_model_metadata("digits8")
    assert digits["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]},
                                {"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert digits["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]}]
    over_grpc = grpc_client.get_model_metadata("multi", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in over_grpc["inputs"]] == [
        ("a", "FP32", ["-1", "3"]), ("b", "INT64", ["-1", "1"])]  # int64 as strings; [-1] batched: Triton's [-1, 1]


def test_every_datatype_rest_json(url, feeds, reference):
    body = {"inputs": [{"name": k, "datatype": V2[k[3:]], "shape": list(v.shape), "data": _json_data(v)}
                       for k, v in feeds.items()]}
    answer = requests.post(f"{url}/v2/models/alltypes/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert set(outputs) == set(reference)
    for key, want in reference.items():
        output = outputs[key]
        assert output["datatype"] == V2[key[4:]] and output["shape"] == list(want.shape)
        if want.dtype == object:
            assert output["data"] == [bytes(v).decode("utf-8") for v in want.flat]
        else:
            _equal(np.array(output["data"], dtype=want.dtype).reshape(want.shape), want)


def test_every_datatype_rest_binary(http_client, feeds, reference):
    inputs = []
    for key, value in feeds.items():
        tensor = tritonhttp.InferInput(key, list(value.shape), V2[key[3:]])
        tensor.set_data_from_numpy(value)  # binary, tritonclient's default
        inputs.append(tensor)
    outputs = [tritonhttp.InferRequestedOutput(k, binary_data=True) for k in reference]
    result = http_client.infer("alltypes", inputs, outputs=outputs)
    for key, want in reference.items():
        _equal(result.as_numpy(key), want)


def test_every_datatype_grpc_raw(grpc_client, feeds, reference):
    inputs = []
    for key, value in feeds.items():
        tensor = tritongrpc.InferInput(key, list(value.shape), V2[key[3:]])
        tensor.set_data_from_numpy(value)  # raw_input_contents
        inputs.append(tensor)
    result = grpc_client.infer("alltypes", inputs)
    for key, want in reference.items():
        _equal(result.as_numpy(key), want)


_FIELDS = {"bool": "bool_contents", "int8": "int_contents", "int16": "int_contents", "int32": "int_contents",
           "int64": "int64_contents", "uint8": "uint_contents", "uint16": "uint_contents",
           "uint32": "uint_contents", "uint64": "uint64_contents", "float32": "fp32_contents",
           "float64": "fp64_contents", "string": "bytes_contents"}


def test_every_datatype_grpc_typed_contents(stub, root, feeds):
    """Each datatype in its typed ``contents`` field (FP16 has none: v2 sends it raw only)."""
    typed = {k: v for k, v in feeds.items() if k != "in_float16"}
    request = service_pb2.ModelInferRequest(model_name="typed")
    for key, value in typed.items():
        tensor = request.inputs.add(name=key, datatype=V2[key[3:]], shape=list(value.shape))
        getattr(tensor.contents, _FIELDS[key[3:]]).extend(value.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=30)
    want = run_frozen(root / "typed" / "1", "serving_default", typed)
    assert {o.name for o in response.outputs} == set(want)
    for output, raw in zip(response.outputs, response.raw_output_contents):
        assert list(output.shape) == list(want[output.name].shape) and output.datatype == V2[output.name[4:]]
        assert raw == _raw(want[output.name])
    fp16 = service_pb2.ModelInferRequest(model_name="alltypes")
    fp16.inputs.add(name="in_float16", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([1, 2])
    with pytest.raises(grpc.RpcError, match="FP16 travels in raw_input_contents only") as info:
        stub.ModelInfer(fp16, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _raw(value: np.ndarray) -> bytes:
    if value.dtype == object:
        return b"".join(len(v).to_bytes(4, "little") + bytes(v) for v in value.flat)
    return value.astype(value.dtype.newbyteorder("<")).tobytes()


def test_typed_contents_of_each_dtype(stub, root):
    """Every typed field, one dtype at a time: multi's a (FP32 fp32_contents) and b (INT64)."""
    request = service_pb2.ModelInferRequest(model_name="multi")
    a = request.inputs.add(name="a", datatype="FP32", shape=[2, 3])
    a.contents.fp32_contents.extend([1, 2, 3, 4, 5, 6])
    b = request.inputs.add(name="b", datatype="INT64", shape=[2])
    b.contents.int64_contents.extend([10, -20])
    response = stub.ModelInfer(request, timeout=30)
    want = run_frozen(root / "multi" / "1", "serving_default",
                      {"a": np.arange(1, 7, dtype=np.float32).reshape(2, 3), "b": np.array([10, -20])})
    got = {o.name: (o, raw) for o, raw in zip(response.outputs, response.raw_output_contents)}
    assert got["total"][1] == _raw(want["total"]) and got["doubled"][1] == _raw(want["doubled"])


def test_multi_requested_outputs(http_client, grpc_client, root):
    a = np.array([[1, 2, 3], [0.5, -1, 4]], dtype=np.float32)
    b = np.array([7, -3], dtype=np.int64)
    want = run_frozen(root / "multi" / "1", "serving_default", {"a": a, "b": b})
    for module, client in ((tritonhttp, http_client), (tritongrpc, grpc_client)):
        inputs = [module.InferInput("a", [2, 3], "FP32"), module.InferInput("b", [2], "INT64")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("multi", inputs, outputs=[module.InferRequestedOutput("doubled")])
        _equal(result.as_numpy("doubled"), want["doubled"])
        assert result.as_numpy("total") is None  # only what was asked
        everything = client.infer("multi", inputs)
        _equal(everything.as_numpy("total"), want["total"])
        _equal(everything.as_numpy("doubled"), want["doubled"])


def test_json_outputs_and_binary_mix(url, root):
    a = [[1.0, 2.0, 3.0]]
    body = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},  # ints for FP32: fine
                       {"name": "b", "datatype": "INT64", "shape": [1], "data": [5]}],
            "outputs": [{"name": "total"}, {"name": "doubled", "parameters": {"binary_data": True}}]}
    answer = requests.post(f"{url}/v2/models/multi/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["Inference-Header-Content-Length"])
    header = json.loads(answer.content[:length])
    want = run_frozen(root / "multi" / "1", "serving_default", {"a": np.array(a, np.float32), "b": np.array([5])})
    total, doubled = header["outputs"]
    assert total == {"name": "total", "datatype": "FP32", "shape": [1], "data": want["total"].tolist()}
    assert doubled["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(np.frombuffer(answer.content[length:], "<f8").reshape(1, 3), want["doubled"])


def test_half_plus_two(url, stub, root):
    if not (root / "half_plus_two").is_dir():
        pytest.skip("TF Serving's half_plus_two is not in ../shared/testdata")
    metadata = requests.get(f"{url}/v2/models/half_plus_two", timeout=5).json()
    assert metadata["versions"] == ["123"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]  # unknown rank
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0, 5.0]}]}
    answer = requests.post(f"{url}/v2/models/half_plus_two/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [3], "data": [2.5, 3.0, 4.5]}]
    request = service_pb2.ModelInferRequest(model_name="half_plus_two", model_version="123")
    request.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 2, 5])
    response = stub.ModelInfer(request, timeout=30)
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [2.5, 3.0, 4.5]


@pytest.mark.parametrize(("model", "shape"), [("digits8", [2, 64]), ("digits16", [2, 16, 16, 1])])
def test_image_classifier_tensor_input(http_client, grpc_client, root, digits, model, shape):
    pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
    want = _reference_scores(root, model, pixels)
    for module, client in ((tritonhttp, http_client), (tritongrpc, grpc_client)):
        tensor = module.InferInput("input", shape, "FP32")
        tensor.set_data_from_numpy(pixels)
        result = client.infer(model, [tensor])
        np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
    image = tritonhttp.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png_bytes(digits.test_images[0])], dtype=object))
    tensor = tritonhttp.InferInput("input", shape, "FP32")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException, match="give either 'image'") as info:
        http_client.infer(model, [image, tensor])
    assert info.value.status() == "400"
    assert http_client.infer(model, [image]).as_numpy("scores").shape == (1, 10)  # the image path, as before


def _reference_scores(root: Path, model: str, pixels: np.ndarray) -> np.ndarray:
    """The classifier's frozen graph in a plain Session: its output (softmax of logits) for ``pixels``."""
    import tensorflow as tf

    folder = root / model / "1"
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((folder / "model.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        scores = session.run(manifest["output"]["tensor"], {manifest["input"]["tensor"]: pixels})
    if manifest["output"]["kind"] == "logits":
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
    return scores


def test_tensor_model_refuses_images(url):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}
    answer = requests.post(f"{url}/v2/models/multi/infer", json=body, timeout=30)
    assert answer.status_code == 400
    assert "takes no 'image' input" in answer.json()["error"] and "'a' (FP32 [-1, 3])" in answer.json()["error"]


def test_model_config(http_client, grpc_client):
    config = http_client.get_model_config("multi")
    assert config["name"] == "multi" and config["platform"] == "tensorflow_graphdef"
    assert config["backend"] == "tensorflow" and config["max_batch_size"] == 16
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("a", "TYPE_FP32", [3]), ("b", "TYPE_INT64", [1])]
    assert "reshape" not in config["input"][1]  # [-1] batched is dims [1]: [n, 1] and [n] are both taken
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("total", "TYPE_FP32", [1]), ("doubled", "TYPE_FP64", [3])]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 0}
    over_grpc = grpc_client.get_model_config("multi", "1").config
    assert (over_grpc.name, over_grpc.max_batch_size) == ("multi", 16)
    assert [(i.name, i.data_type, list(i.dims)) for i in over_grpc.input] == [
        ("a", tritongrpc.model_config_pb2.TYPE_FP32, [3]), ("b", tritongrpc.model_config_pb2.TYPE_INT64, [1])]
    digits = http_client.get_model_config("digits8")
    assert [(i["name"], i["data_type"], i["dims"]) for i in digits["input"]] == [
        ("image", "TYPE_STRING", [1]), ("input", "TYPE_FP32", [64])]
    assert digits["output"][0]["label_filename"] == "labels.txt"
    strings = http_client.get_model_config("alltypes")
    assert {i["name"]: i["data_type"] for i in strings["input"]}["in_string"] == "TYPE_STRING"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        http_client.get_model_config("nope")
    assert info.value.status() == "404"


def test_reshaped_input_accepted(http_client, root):
    """perf_analyzer sends [n, 1] for b (config dims [1], batched); the graph takes [n]."""
    a = np.ones((2, 3), np.float32)
    b = np.array([[4], [5]], np.int64)
    inputs = [tritonhttp.InferInput("a", [2, 3], "FP32"), tritonhttp.InferInput("b", [2, 1], "INT64")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    want = run_frozen(root / "multi" / "1", "serving_default", {"a": a, "b": b.reshape(2)})
    _equal(http_client.infer("multi", inputs).as_numpy("total"), want["total"])


def test_health_bodies(url):
    assert requests.get(f"{url}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{url}/v2/health/ready", timeout=5).json() == {"ready": True}
    assert requests.get(f"{url}/v2/models/multi/ready", timeout=5).json() == {"name": "multi", "ready": True}
    answer = requests.get(f"{url}/v2/models/nope/ready", timeout=5)
    assert answer.status_code == 400 and answer.json()["ready"] is False and "nope" in answer.json()["error"]
    extensions = requests.get(f"{url}/v2", timeout=5).json()["extensions"]
    assert "model_configuration" in extensions and "statistics" not in extensions


def _post(url: str, path: str, body: dict | bytes, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{url}{path}", data=data, headers=headers, timeout=30)


def _multi(a: dict | None = None, b: dict | None = None) -> dict:
    return {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3], **(a or {})},
                       {"name": "b", "datatype": "INT64", "shape": [1], "data": [1], **(b or {})}]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (_multi(a={"datatype": "FP64"}), 400, "unexpected datatype FP64 for inference input 'a', expecting FP32"),
        (_multi(b={"data": [1.5]}), 400, "must be an integer, got 1.5"),
        (_multi(b={"data": [True]}), 400, "must be an integer, got True"),
        (_multi(a={"data": [1, 2, "x"]}), 400, "must be a number"),
        (_multi(a={"shape": [2, 3]}), 400, "the shape says 6 elements but its JSON 'data' holds 3"),
        (_multi(a={"shape": [1, 4], "data": [1, 2, 3, 4]}), 400, "the graph takes [-1, 3]"),
        (_multi(a={"name": "c"}), 400, "unexpected inference input 'c' for model 'multi'"),
        ({"inputs": _multi()["inputs"][:1]}, 400, "misses input(s) 'b'"),
        (_multi(a={"shape": [1000000, 1000000]}), 413, "max_tensor_bytes"),
        (_multi(a={"shape": [1, -3]}), 400, "negative dimension"),
        (_multi(a={"shape": "1,3"}), 400, "'shape' must be a list"),
        ({**_multi(), "outputs": [{"name": "nope"}]}, 400, "unexpected inference output 'nope'"),
        ({"inputs": _multi()["inputs"] * 2}, 400, "given twice"),
        (_multi(a={"data": [1, 2, 10 ** 400]}), 400, "outside FP32's range"),
        (_multi(b={"data": [2 ** 64]}), 400, "input 'b' (INT64 [1])"),  # out of range (or read as a float)
        ({"inputs": [{"name": "in_bool", "datatype": "BOOL", "shape": [1, 2], "data": [1, 0]}]}, 400,
         "must be true or false"),
        ({"inputs": [{"name": "in_int8", "datatype": "INT8", "shape": [1, 2], "data": [1, 128]}]}, 400,
         "outside INT8's range [-128, 127]"),
        ({"inputs": [{"name": "in_string", "datatype": "BYTES", "shape": [1], "data": [5]}]}, 400,
         "must be a string"),
    ],
)
def test_bad_tensors(url, body, status, message):
    model = "alltypes" if body["inputs"][0]["name"].startswith("in_") else "multi"
    answer = _post(url, f"/v2/models/{model}/infer", body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and message in answer.json()["error"]


def test_bad_tensors_binary(url):
    header = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}},
                         {"name": "b", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    text = json.dumps(header).encode()
    answer = _post(url, "/v2/models/multi/infer", text + bytes(16), **{"Inference-Header-Content-Length": str(len(text))})
    assert answer.status_code == 400 and "unexpected total byte size 8 for input 'a' (FP32 [1, 3]), expecting 12" in \
        answer.json()["error"]
    huge = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [10 ** 12, 3], "parameters": {"binary_data_size": 0}}]}
    text = json.dumps(huge).encode()
    answer = _post(url, "/v2/models/multi/infer", text, **{"Inference-Header-Content-Length": str(len(text))})
    assert answer.status_code == 413 and "max_tensor_bytes" in answer.json()["error"]


def test_unknown_model_is_404_whatever_the_body(url):
    answer = _post(url, "/v2/models/nope/infer", b"{not json")
    assert answer.status_code == 404 and "unknown model 'nope'" in answer.json()["error"]
    for path, method in (("/v2/nowhere", "get"), ("/v2/models/multi/infer", "get"), ("/v2/models/multi/config", "post")):
        answer = getattr(requests, method)(f"{url}{path}", timeout=5)
        assert answer.status_code in (404, 405) and set(answer.json()) == {"error"}, path


def test_bad_tensors_grpc(stub):
    def infer(**kwargs) -> grpc.RpcError:
        request = service_pb2.ModelInferRequest(model_name="multi", **kwargs)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        return info.value

    a = service_pb2.ModelInferRequest.InferInputTensor(name="a", datatype="FP32", shape=[1, 3])
    b = service_pb2.ModelInferRequest.InferInputTensor(name="b", datatype="INT64", shape=[1])
    wrong = service_pb2.ModelInferRequest.InferInputTensor(name="a", datatype="INT32", shape=[1, 3])
    huge = service_pb2.ModelInferRequest.InferInputTensor(name="a", datatype="FP32", shape=[10 ** 12, 3])
    cases = [
        (infer(inputs=[wrong, b], raw_input_contents=[bytes(12), bytes(8)]), "unexpected datatype INT32"),
        (infer(inputs=[a, b], raw_input_contents=[bytes(11), bytes(8)]), "unexpected total byte size 11"),
        (infer(inputs=[a, b], raw_input_contents=[bytes(12)]), "raw_input_contents has 1 entries for 2 inputs"),
        (infer(inputs=[huge, b], raw_input_contents=[b"", bytes(8)]), "max_tensor_bytes"),
        (infer(inputs=[a, b]), "the shape says 3 elements but fp32_contents holds 0"),
    ]
    for error, message in cases:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details(), error.details()
    small = service_pb2.ModelInferRequest.InferInputTensor(name="in_int8", datatype="INT8", shape=[1, 2])
    small.contents.int_contents.extend([1, 300])
    request = service_pb2.ModelInferRequest(model_name="alltypes", inputs=[small])
    with pytest.raises(grpc.RpcError, match=r"outside INT8's range"):
        stub.ModelInfer(request, timeout=30)


def test_unimplemented_rpc_is_named(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="multi"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ModelStatistics" in info.value.details()
