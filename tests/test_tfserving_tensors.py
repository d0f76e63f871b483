"""TF Serving REST and gRPC serving models by their own tensors, on real servers, with the
bodies of TF Serving's ``api_rest.md`` and the protos TF Serving's docs build with
``tf.make_tensor_proto``; every answer is compared with the frozen graph run in a plain
Session (``tests.tensor_models.run_frozen``), and the cases TF Serving's own tests assert."""

from __future__ import annotations

import base64
import math

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from app.services import services_of
from tests.digits import png_bytes
from tests.server import running
from tests.tensor_models import ALL_DTYPES, run_frozen, write_alltypes, write_half_plus_two, write_multi


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensor_graphs")
    return root, {"half_plus_two": write_half_plus_two(root), "multi": write_multi(root),
                  "alltypes": write_alltypes(root)}


@pytest.fixture(scope="module")
def tensor_app(folders):
    from app import create_app

    application = create_app({"GRAPHS_DIR": str(folders[0])})
    yield application
    services_of(application).registry.close()


@pytest.fixture(scope="module")
def url(tensor_app):
    with running(tensor_app) as base:
        yield base


@pytest.fixture(scope="module")
def stub(tensor_app):
    from app.grpc_server import start_grpc_server

    server, port = start_grpc_server(tensor_app)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel), channel
    server.stop(None)


def post(url: str, path: str, body: object) -> requests.Response:
    return requests.post(f"{url}/v1/models/{path}", json=body, timeout=10)


def error(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return response.status_code, body["error"]


def fails(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value.code(), raised.value.details()


def predict_request(model: str, signature: str = "", **inputs: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, type(request.inputs[key])) else tf.make_tensor_proto(value))
    return request


# -- REST predict -----------------------------------------------------------------------------

def test_quickstart_curl(url, folders):
    response = requests.post(f"{url}/v1/models/half_plus_two:predict", data=b'{"instances": [1.0, 2.0, 5.0]}',
                             timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}  # TF Serving's documented answer
    expected = run_frozen(folders[1]["half_plus_two"], "serving_default", {"x": np.array([[1], [2], [5]], np.float32)})
    assert response.json()["predictions"] == expected["y"].reshape(-1).tolist()
    columnar = post(url, "half_plus_two:predict", {"inputs": {"x": [[1.0], [2.0]]}}).json()
    assert columnar == {"outputs": [[2.5], [3.0]]}
    assert post(url, "half_plus_two:predict", {"inputs": 3}).json() == {"outputs": 3.5}  # ints cast to float
    # NaN and Infinity literals, as TF Serving reads and writes them
    response = requests.post(f"{url}/v1/models/half_plus_two:predict", data=b'{"instances": [NaN, Infinity]}',
                             timeout=10)
    values = response.json()["predictions"]
    assert math.isnan(values[0]) and values[1] == math.inf and "NaN" in response.text


def test_multi_input_output_row_and_columnar(url, folders):
    a = np.array([[1, 2, 3], [4, 5, 6.5]], np.float32)
    b = np.array([10, -20], np.int64)
    expected = run_frozen(folders[1]["multi"], "serving_default", {"a": a, "b": b})
    row = post(url, "multi:predict", {"instances": [{"a": a[i].tolist(), "b": int(b[i])} for i in range(2)]})
    assert row.status_code == 200, row.text
    assert row.json() == {"predictions": [{"total": float(expected["total"][i]),
                                           "doubled": expected["doubled"][i].tolist()} for i in range(2)]}
    column = post(url, "multi:predict", {"inputs": {"a": a.tolist(), "b": b.tolist()}})
    assert column.json() == {"outputs": {"total": expected["total"].tolist(), "doubled": expected["doubled"].tolist()}}
    filtered = post(url, "multi:predict", {"inputs": {"a": a.tolist(), "b": b.tolist()}, "output_filter": ["total"]})
    assert filtered.json() == {"outputs": expected["total"].tolist()}


def _alltypes_values() -> dict[str, np.ndarray]:
    values = {}
    for dtype in ALL_DTYPES:
        if dtype == "string":
            values[dtype] = np.array([b"caf\xc3\xa9", b"\xff\x00bin"], dtype=object)
        elif dtype == "bool":
            values[dtype] = np.array([[True, False], [False, True]])
        else:
            info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
            high = info.max if info is not None else 1.5
            low = info.min if info is not None else -2.25
            values[dtype] = np.array([[low, 0], [1, high]], dtype=dtype)
    return values


def test_every_dtype_over_rest(url, folders):
    values = _alltypes_values()
    body = {"inputs": {}}
    for dtype, array in values.items():
        if dtype == "string":
            body["inputs"][f"in_{dtype}"] = ["café", {"b64": base64.b64encode(array[1]).decode()}]
        else:
            body["inputs"][f"in_{dtype}"] = array.tolist()
    response = post(url, "alltypes:predict", body)
    assert response.status_code == 200, response.text
    expected = run_frozen(folders[1]["alltypes"], "serving_default", {f"in_{d}": v for d, v in values.items()})
    outputs = response.json()["outputs"]
    for dtype in ALL_DTYPES:
        got = outputs[f"out_{dtype}"]
        if dtype == "string":  # UTF-8 as a string, other bytes as {"b64"}
            assert got == ["café", {"b64": base64.b64encode(b"\xff\x00bin").decode()}]
        else:
            np.testing.assert_array_equal(np.array(got, dtype=dtype), expected[f"out_{dtype}"])


# -- gRPC predict -----------------------------------------------------------------------------

def test_every_dtype_over_grpc_content_and_vals(stub, folders):
    predict, _ = stub
    values = _alltypes_values()
    expected = run_frozen(folders[1]["alltypes"], "serving_default", {f"in_{d}": v for d, v in values.items()})
    content = predict_request("alltypes", **{f"in_{d}": v for d, v in values.items()})  # tensor_content
    typed = predict_request("alltypes")
    for dtype, array in values.items():  # the *_val fields, filled by hand as other clients do
        proto = typed.inputs[f"in_{dtype}"]
        proto.dtype = tf.as_dtype(dtype).as_datatype_enum
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        flat = array.reshape(-1)
        if dtype == "string":
            proto.string_val.extend(flat.tolist())
        elif dtype == "float16":
            proto.half_val.extend(flat.view(np.uint16).tolist())
        else:
            field = {"float32": "float_val", "float64": "double_val", "int64": "int64_val", "uint32": "uint32_val",
                     "uint64": "uint64_val", "bool": "bool_val"}.get(dtype, "int_val")
            getattr(proto, field).extend(flat.tolist())
    assert any(p.tensor_content for p in content.inputs.values())
    for request in (content, typed):
        response = predict.Predict(request, timeout=10)
        assert response.model_spec.name == "alltypes" and response.model_spec.version.value == 1
        assert response.model_spec.signature_name == "serving_default"
        for dtype in ALL_DTYPES:
            got = tf.make_ndarray(response.outputs[f"out_{dtype}"])
            assert got.dtype == expected[f"out_{dtype}"].dtype
            np.testing.assert_array_equal(got, expected[f"out_{dtype}"])


def test_grpc_half_plus_two_and_single_value_fill(stub):
    predict, _ = stub
    response = predict.Predict(predict_request("half_plus_two", x=np.array([1.0, 2.0, 5.0], np.float32)), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]  # TF Serving's docs' clients read float_val
    assert response.model_spec.version.value == 123
    # written as TF Serving's docs write a client: make_tensor_proto with a shape, result's float_val
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.0], [5.0]], np.float32), shape=[3, 1]))
    assert list(predict.Predict(request, 10.0).outputs["y"].float_val) == [2.5, 3.0, 4.5]
    request = predict_request("half_plus_two")
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].tensor_shape.dim.add(size=3)
    request.inputs["x"].float_val.append(1.0)  # TF's rule: one value fills the shape
    assert tf.make_ndarray(predict.Predict(request, timeout=10).outputs["y"]).tolist() == [2.5, 2.5, 2.5]
    request = predict_request("multi", a=np.ones((2, 3), np.float32), b=np.array([1, 2], np.int64))
    request.output_filter.append("doubled")
    response = predict.Predict(request, timeout=10)
    assert list(response.outputs) == ["doubled"]


# -- classify and regress ----------------------------------------------------------------------

def test_rest_classify_and_regress(url, folders):
    regress = post(url, "half_plus_two:regress", {"signature_name": "regress_x_to_y",
                                                  "examples": [{"x": 1.0}, {"x": 2.0}]})
    assert regress.status_code == 200, regress.text
    assert regress.json() == {"results": [2.5, 3.0]}
    # context is merged into each example
    regress = post(url, "half_plus_two:regress", {"signature_name": "regress_x_to_y", "context": {"x": 5.0},
                                                  "examples": [{}, {"x": 1.0}]})
    assert regress.json() == {"results": [4.5, 2.5]}
    classify = post(url, "half_plus_two:classify", {"signature_name": "classify_x_to_y",
                                                    "examples": [{"x": 1.0}, {"x": 5.0}]})
    assert classify.json() == {"results": [[["", 2.5]], [["", 4.5]]]}  # no classes output: label ""
    status, message = error(post(url, "half_plus_two:classify", {"signature_name": "regress_x_to_y",
                                                                 "examples": [{"x": 1.0}]}))
    assert status == 400 and message.startswith("Expected classification signature method_name to be "
                                                "tensorflow/serving/classify. Was: tensorflow/serving/regress")
    status, message = error(post(url, "half_plus_two:regress", {"examples": [{"x": 1.0}]}))
    assert status == 400 and "Expected regression signature" in message  # serving_default is predict
    assert error(post(url, "half_plus_two:regress", {"signature_name": "regress_x_to_y", "examples": []}))[0] == 400
    # an int feature is an int64_list: the graph's parse refuses it, a 400 (never a 5xx)
    assert error(post(url, "half_plus_two:regress", {"signature_name": "regress_x_to_y",
                                                     "examples": [{"x": 1}]}))[0] == 400


def test_grpc_classify_and_regress(stub):
    predict, _ = stub
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    for x in (1.0, 2.0):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    response = predict.Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [2.5, 3.0]
    assert response.model_spec.signature_name == "regress_x_to_y" and response.model_spec.version.value == 123
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    listed = classify.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(5.0)
    listed.examples.add()
    listed.examples.add().features.feature["x"].float_list.value.append(1.0)
    result = predict.Classify(classify, timeout=10).result
    assert [[(c.label, c.score) for c in cl.classes] for cl in result.classifications] == [[("", 4.5)], [("", 2.5)]]
    request.model_spec.signature_name = "classify_x_to_y"
    code, message = fails(predict.Regress, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Expected regression signature" in message


def test_grpc_multi_inference(stub):
    predict, _ = stub
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
    for x in (1.0, 5.0):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    results = predict.MultiInference(request, timeout=10).results
    assert [r.value for r in results[0].regression_result.regressions] == [2.5, 4.5]
    assert [[c.score for c in cl.classes] for cl in results[1].classification_result.classifications] == [[2.5], [4.5]]
    assert [r.model_spec.signature_name for r in results] == ["regress_x_to_y", "classify_x_to_y"]
    request.tasks[1].model_spec.signature_name = "regress_x_to_y"
    request.tasks[1].method_name = "tensorflow/serving/regress"
    assert fails(predict.MultiInference, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                      "Duplicate evaluation of signature: regress_x_to_y")


# -- metadata and the image classifier's own tensor ---------------------------------------------

def test_metadata_lists_every_signature(url, stub):
    signatures = requests.get(f"{url}/v1/models/half_plus_two/metadata", timeout=10).json()[
        "metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3"} <= set(signatures)
    assert signatures["regress_x_to_y"]["method_name"] == "tensorflow/serving/regress"
    assert signatures["regress_x_to_y"]["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert signatures["regress_x_to_y"]["inputs"]["inputs"]["tensor_shape"]["unknown_rank"] is True
    x = signatures["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "1"]
    predict, _ = stub
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "multi"
    response = predict.GetModelMetadata(request, timeout=10)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    assert set(defs.signature_def["serving_default"].inputs) == {"a", "b"}
    assert defs.signature_def["serving_default"].outputs["doubled"].dtype == tf.float64.as_datatype_enum


def test_image_classifier_takes_its_own_tensor(app, digits, graphs_dir):
    pixels = digits.test_images[:2]  # 8x8 gray in [0, 255]
    with running(app) as base:
        meta = requests.get(f"{base}/v1/models/digits8/metadata", timeout=10).json()
        inputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
        assert set(inputs) == {"images", "input"}
        images = post(base, "digits8:predict", {"signature_name": "scores", "instances": [
            {"b64": base64.b64encode(png_bytes(p)).decode()} for p in pixels]}).json()["predictions"]
        flat = (np.asarray(pixels, np.float32) / 255.0).reshape(len(pixels), 64)  # digits8: [0,1], flattened
        tensor = post(base, "digits8:predict", {"instances": flat.tolist(), "output_filter": ["scores"]})
        assert tensor.status_code == 200, tensor.text
        expected = run_frozen_image(graphs_dir / "digits8" / "1", flat)
        np.testing.assert_allclose(tensor.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tensor.json()["predictions"], images, atol=1e-4)
        both = post(base, "digits8:predict", {"inputs": {"input": flat.tolist()}}).json()["outputs"]
        assert set(both) == {"scores", "classes"} and len(both["classes"]) == 2


def run_frozen_image(folder, flat: np.ndarray) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((folder / "model.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run("probs:0", {"input:0": flat})


# -- TF Serving's own assertions -------------------------------------------------------------

def test_tf_serving_cases(url, stub):
    predict, channel = stub
    code, message = fails(predict.Predict, predict_request("nope"))  # no inputs: the model is looked up first
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    for call, request in ((predict.Predict, predict_pb2.PredictRequest()),
                          (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest()),
                          (model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus,
                           get_model_status_pb2.GetModelStatusRequest())):
        assert fails(call, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request = predict_request("half_plus_two", x=np.array([1.0], np.float32))
    request.model_spec.version_label = "nope"
    assert fails(predict.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Unrecognized servable version label: nope")
    response = requests.post(f"{url}/v1/models/nope:predict", data=b"{not json", timeout=10)
    assert error(response)[0] == 404  # the model first
    assert error(requests.get(f"{url}/v1/models/half_plus_two/labels/nope", timeout=10)) == (
        400, "Unrecognized servable version label: nope")
    for method, path in (("GET", "/v1/foo"), ("GET", "/v1/models"), ("PUT", "/v1/models/half_plus_two:predict")):
        answer = requests.request(method, f"{url}{path}", timeout=10)
        assert error(answer) == (400, f"Malformed request: {method} {path}")
    status = requests.get(f"{url}/v1/models/half_plus_two", timeout=10).json()
    assert status["name"] == "half_plus_two" and status["ready"] is True
    assert status["model_version_status"][0]["version"] == "123"
    alive = requests.get(f"{url}/", headers={"Accept": "application/json"}, timeout=10)
    assert alive.json() == {"status": "alive"}
    assert "text/html" in requests.get(f"{url}/", headers={"Accept": "text/html,*/*"}, timeout=10).headers[
        "Content-Type"]


@pytest.mark.parametrize("model,body,names", [
    ("half_plus_two", {"instances": [[1.0], [2.0, 3.0]]}, "ragged"),
    ("half_plus_two", {"inputs": {"x": [["a"]]}}, "'x'"),
    ("half_plus_two", {"inputs": {"y": [1.0]}}, "'y'"),
    ("multi", {"inputs": {"a": [[1, 2, 3]]}}, "'b'"),
    ("multi", {"inputs": {"a": [[1, 2]], "b": [1]}}, "'a'"),
    ("multi", {"inputs": {"a": [[1, 2, 3]], "b": [1.5]}}, "whole numbers"),
    ("multi", {"inputs": {"a": [[True, 2, 3]], "b": [1]}}, "'a'"),
    ("multi", {"instances": [{"a": [1, 2, 3], "b": 1}, {"a": [1, 2, 3]}]}, "same inputs"),
    ("alltypes", {"inputs": {"in_int8": [[1, 300]]}}, "out of range"),
    ("multi", {"inputs": {"a": [[1.0, 2.0, 3.0]] * 300_000, "b": [1]}}, "more than"),  # wire.load_json's bound
])
def test_bad_rest_tensors_are_4xx(url, model, body, names):
    status, message = error(post(url, f"{model}:predict", body))
    assert 400 <= status < 500 and names in message, message
    assert post(url, "half_plus_two:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}


def test_too_many_elements_refused_before_building(folders):
    from app import create_app

    small = create_app({"GRAPHS_DIR": str(folders[0]), "max_tensor_bytes": 4096})  # float32 [400, 3]: 4,800 bytes
    with running(small) as base:
        status, message = error(post(base, "multi:predict", {"inputs": {"a": [[1, 2, 3]] * 400, "b": [1] * 400}}))
        assert status == 400 and "max_tensor_bytes" in message and "'a'" in message
        assert post(base, "multi:predict", {"inputs": {"a": [[1, 2, 3]], "b": [1]}}).status_code == 200
    services_of(small).registry.close()


def test_bad_grpc_tensors_are_client_errors(stub):
    predict, _ = stub
    cases = [
        predict_request("half_plus_two", x=np.array([1.0], np.float64)),  # wrong dtype: TF Serving is strict
        predict_request("half_plus_two", y=np.array([1.0], np.float32)),  # unknown input
        predict_request("multi", a=np.ones((1, 3), np.float32)),  # missing input
        predict_request("multi", a=np.ones((1, 4), np.float32), b=np.array([1], np.int64)),  # shape
    ]
    short = predict_request("half_plus_two", x=np.array([1.0, 2.0], np.float32))
    short.inputs["x"].tensor_content = short.inputs["x"].tensor_content[:5]
    huge = predict_request("half_plus_two")
    huge.inputs["x"].dtype = tf.float32.as_datatype_enum
    huge.inputs["x"].tensor_shape.dim.add(size=1 << 40)
    huge.inputs["x"].float_val.append(1.0)
    for request in (*cases, short, huge):
        code, message = fails(predict.Predict, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    code, message = fails(predict.Predict, cases[0])
    assert "float32" in message and "DT_DOUBLE" in message
    response = predict.Predict(predict_request("half_plus_two", x=np.array([1.0], np.float32)), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5]
