"""TensorFlow Serving's REST API, as its documentation shows it
(https://www.tensorflow.org/tfx/serving/api_rest): each request below is one of its examples
with our model's name and tensors in place of ``half_plus_three``'s, and gets the answer the
page documents for a model of one input and one output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sample_data import SmallModel

from mnist_pipeline import inference
from mnist_pipeline.app import api, tf_serving

MODEL = f"/v1/models/{tf_serving.TF_SERVING_NAME}"


@pytest.fixture(scope="module")
def client(small_model: SmallModel):
    with TestClient(api.create_app(small_model.onnx_path)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def digits(small_model: SmallModel) -> tuple[list, np.ndarray]:
    """Three digits as JSON lists, and the model's probabilities for them."""
    chosen = small_model.digits[:3]
    return chosen.astype(int).tolist(), np.asarray(small_model.model(chosen.astype(int)))


def curl_d(client: TestClient, path: str, document: object):
    """`curl -d '<json>' -X POST`: curl sends form-urlencoded, TF Serving reads JSON anyway."""
    return client.post(path, content=json.dumps(document),
                       headers={"content-type": "application/x-www-form-urlencoded"})


def test_model_status_as_in_the_documented_curl(client: TestClient) -> None:
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.get(MODEL).json() == expected
    assert client.get(f"{MODEL}/versions/1").json() == expected
    missing = client.get(f"{MODEL}/versions/2")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Servable not found for request: Specific(mnist, 2)"}


@pytest.mark.parametrize("path", [f"{MODEL}:predict", f"{MODEL}/versions/1:predict"])
def test_row_format_named_or_not_answers_predictions(client: TestClient, digits, path) -> None:
    pixels, expected = digits
    for document in ({"instances": pixels},
                     {"instances": [{"pixels": digit} for digit in pixels]},
                     {"signature_name": "serving_default", "instances": pixels},
                     {"signature_name": "", "instances": pixels}):  # "": the default, as TF's
        response = curl_d(client, path, document)
        assert response.status_code == 200, response.text
        assert list(response.json()) == ["predictions"]
        np.testing.assert_allclose(response.json()["predictions"], expected, atol=1e-5)


def test_columnar_format_named_or_not_answers_outputs(client: TestClient, digits) -> None:
    pixels, expected = digits
    for document in ({"inputs": pixels}, {"inputs": {"pixels": pixels}}):
        response = client.post(f"{MODEL}:predict", json=document)
        assert response.status_code == 200, response.text
        assert list(response.json()) == ["outputs"]
        np.testing.assert_allclose(response.json()["outputs"], expected, atol=1e-5)


def test_metadata_describes_the_one_signature(client: TestClient) -> None:
    for path in (f"{MODEL}/metadata", f"{MODEL}/versions/1/metadata"):
        answer = client.get(path).json()
        assert answer["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
        signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        (name, tensor), = signature["inputs"].items()
        assert name == "pixels" and tensor["dtype"] == "DT_FLOAT"
        assert [dim["size"] for dim in tensor["tensor_shape"]["dim"]] == ["-1", "28", "28"]
        (name, tensor), = signature["outputs"].items()
        assert name == "probabilities"
        assert [dim["size"] for dim in tensor["tensor_shape"]["dim"]] == ["-1", "10"]


def test_the_documented_error_for_another_model(client: TestClient) -> None:
    """`curl -i -d '{"instances": [1.0,5.0]}' -X POST .../v1/models/half:predict`"""
    response = curl_d(client, "/v1/models/half:predict", {"instances": [1.0, 5.0]})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "Servable not found for request: Latest(half)"}
    assert client.get("/v1/models/half").json() == {
        "error": "Servable not found for request: Latest(half)"}


@pytest.mark.parametrize("method, path, document, status, reason", [
    ("post", f"{MODEL}:predict", {"instances": [[[0] * 28] * 28], "inputs": [[[0] * 28] * 28]},
     422, "one of the two"),
    ("post", f"{MODEL}:predict", {"signature_name": "bogus", "instances": [[[0] * 28] * 28]},
     422, "signature_name 'bogus' not found"),
    ("post", f"{MODEL}:predict", {"instances": [{"image": [[0] * 28] * 28}]}, 422,
     "input(s) 'image' not in the signature"),
    ("post", f"{MODEL}:predict", {"inputs": {"pixels": [[[0] * 28] * 28], "x": 1}}, 422,
     "input(s) 'x' not in the signature"),
    ("post", f"{MODEL}:predict", {"instances": [1.0, 5.0]}, 422, "expected a list of 28x28"),
    ("post", f"{MODEL}:classify", {"examples": []}, 422, "only predict is served"),
    ("post", f"{MODEL}/versions/7:predict", {"instances": []}, 404, "Specific(mnist, 7)"),
    ("get", f"{MODEL}:predict", None, 405, "POST it"),
    ("post", f"{MODEL}/metadata", {}, 405, "Method Not Allowed"),
    ("get", "/v1/nothing/here", None, 404, "Not Found"),
])
def test_every_failure_under_v1_is_one_error_line(client: TestClient, method, path, document,
                                                   status, reason) -> None:
    response = client.get(path) if method == "get" else client.post(path, json=document)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"], response.json()
    error = response.json()["error"]
    assert reason in error and "\n" not in error, error


@pytest.mark.parametrize("path", [MODEL, f"{MODEL}/versions/1"])
def test_a_post_without_a_verb_is_405_for_the_model_and_its_version(client: TestClient,
                                                                    digits, path) -> None:
    """TF Serving answers a POST of the model's (or a version's) URL, no `:predict`, with 405."""
    response = curl_d(client, path, {"instances": digits[0]})
    assert response.status_code == 405, response.text
    assert response.json() == {"error": f"POST {path}: POST .../{path.rsplit('/', 1)[1]}"
                                        ":predict, or GET it"}


def test_a_model_that_answers_nan_is_a_500_error_under_v1(small_model: SmallModel) -> None:
    def broken(pixels):
        return np.full((len(pixels), 10), np.nan, np.float32)

    classifier = inference.Classifier(path=None, kind="onnx", run_batch=broken, native=None)
    with TestClient(api.create_app(classifier)) as test_client:
        response = test_client.post(f"{MODEL}:predict",
                                    json={"instances": small_model.digits[:2].tolist()})
    assert response.status_code == 500
    assert response.json() == {"error": "the model answered NaN or infinite probabilities "
                                        "(a broken model file?)"}
