"""`mnist-pipeline serve`'s application, through FastAPI's test client, with a small real model.

Pictures must come out exactly as `mnist-pipeline predict` makes them (digit_image), JSON
pixels as predict reads .npy arrays; every kind of bad input gets a 4xx with a one-line
reason while the server keeps serving; requests that arrive together share a model call.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
import zlib

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sample_data import SmallModel, paper_scan

from mnist_pipeline import inference, pictures
from mnist_pipeline.app import (
    api,
    batching,
    bodies,
    cli,
    guard,
    limits,
    predict,
    tf_serving,
)


def stand_in(model) -> inference.Classifier:
    """A function from pixels to probabilities, served as a loaded model would be."""
    return inference.Classifier(None, "onnx", model, model)


@pytest.fixture(scope="module")
def client(small_model: SmallModel):
    with TestClient(api.create_app(small_model.onnx_path)) as test_client:
        yield test_client


def png_bytes(pixels: np.ndarray, size: int | None = None) -> bytes:
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if size:
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(name: str, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + name.encode() + data
            + struct.pack(">I", zlib.crc32(name.encode() + data)))


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of valid PNG header announcing width x height 8-bit gray pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk("IHDR", header)
            + chunk("IDAT", zlib.compress(b"\x00" * 10_000)) + chunk("IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to announce width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def post_json(client: TestClient, document: object) -> httpx2.Response:
    return client.post("/predict", content=json.dumps(document),
                       headers={"content-type": "application/json"})


def assert_refused(response: httpx2.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    assert reason in detail, detail


# --- answers -------------------------------------------------------------------------------


def test_health_names_the_model(client: TestClient) -> None:
    answer = client.get("/health").json()
    assert answer["status"] == "ok" and answer["model"].endswith("model.onnx")


def test_one_digit_as_json_pixels(client: TestClient, small_model: SmallModel) -> None:
    digit = small_model.digits[0]
    response = post_json(client, {"pixels": digit.astype(int).tolist()})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["label"] == small_model.predicted[0]
    assert len(answer["probabilities"]) == 10
    assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert answer["confidence"] == max(answer["probabilities"])
    assert np.array_equal(answer["digit"], digit)  # JSON pixels are used as they are
    expected = np.asarray(small_model.model(digit[np.newaxis]))[0]
    assert np.allclose(answer["probabilities"], expected, atol=1e-5)


def test_a_batch_answers_in_order(client: TestClient, small_model: SmallModel) -> None:
    response = post_json(client, {"pixels": small_model.digits[:40].tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == small_model.predicted[:40].tolist()
    assert all("digit" not in p for p in predictions)
    single = post_json(client, {"pixels": small_model.digits[:1].tolist()}).json()
    assert len(single["predictions"]) == 1  # N x 28 x 28 is a batch, even of one


def test_pixels_have_one_scale_0_to_255(client: TestClient, small_model: SmallModel) -> None:
    """Integers and floats alike are on 0..255, nothing guessed: the same digit as ints or
    floats gets the same answer, and so do 0/1 and 0.0/1.0 (blank on 0..255: refused as a
    blank picture is, saying how to send [0, 1] pixels)."""
    digits = small_model.digits[:5]
    as_ints = post_json(client, {"pixels": digits.astype(int).tolist()}).json()
    as_floats = post_json(client, {"pixels": (digits + 0.0).tolist()}).json()
    assert np.allclose([p["probabilities"] for p in as_ints["predictions"]],
                       [p["probabilities"] for p in as_floats["predictions"]], atol=1e-6)
    binary = (digits[0] > 127).astype(int)
    for pixels in (binary.tolist(), binary.astype(float).tolist(), (digits / 255).tolist(),
                   np.zeros((28, 28), int).tolist(), np.full((28, 28), 255.0).tolist()):
        assert_refused(post_json(client, {"pixels": pixels}), 400, "blank image")
    response = post_json(client, {"pixels": (digits / 255).tolist()})
    assert "multiply [0, 1] values by 255" in response.json()["detail"]
    assert "5 digits, the first 0 of 5" in response.json()["detail"]
    # the same digit as a blank picture is refused the same way
    assert_refused(client.post("/predict", content=png_bytes(np.zeros((28, 28))),
                               headers={"content-type": "image/png"}), 400, "blank image")
    # a binary digit sent on the 0..255 scale is read
    on_scale = post_json(client, {"pixels": (binary * 255).tolist()})
    assert on_scale.status_code == 200, on_scale.text


def test_an_upload_goes_through_predicts_picture_path(client: TestClient, small_model: SmallModel,
                                                      tmp_path) -> None:
    """A scan-like PNG: the 28x28 the server saw is exactly what predict makes of the file."""
    data = png_bytes(paper_scan(small_model.digits[3]))
    response = client.post("/predict", files={"file": ("scan.png", data, "image/png")})
    assert response.status_code == 200, response.text
    answer = response.json()
    path = tmp_path / "scan.png"
    path.write_bytes(data)
    as_predict_sees_it = predict.load_input(path)[0]
    assert np.array_equal(answer["digit"], np.rint(as_predict_sees_it))
    assert np.array_equal(as_predict_sees_it, pictures.picture_to_digit(data))
    expected = np.asarray(small_model.model(as_predict_sees_it[np.newaxis]))[0]
    assert answer["label"] == int(expected.argmax())
    assert np.allclose(answer["probabilities"], expected, atol=1e-5)


def test_raw_png_and_jpeg_bodies(client: TestClient, small_model: SmallModel) -> None:
    scan = paper_scan(small_model.digits[7])
    labels = []
    for media_type, picture_format in (("image/png", "PNG"), ("image/jpeg", "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(scan.astype(np.uint8)).save(buffer, format=picture_format)
        response = client.post("/predict", content=buffer.getvalue(),
                               headers={"content-type": media_type})
        assert response.status_code == 200, response.text
        labels.append(response.json()["label"])
    assert labels[0] == labels[1]


# --- bad input --------------------------------------------------------------------------------


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"just some text", 400, "not a readable image"),
    (b"", 400, "empty upload"),
    (None, 400, "truncated"),  # the first 300 bytes of a real PNG
    (b"GIF", 400, "GIF"),
    (png_claiming(50_000, 50_000), 413, "too large"),  # a decompression bomb's header
    (jpeg_claiming(65_000, 65_000), 413, "too large"),  # too large even at 1/8 scale
    (png_bytes(np.full((40, 40), 255)), 400, "blank image"),
    (b"CRC", 400, "corrupt PNG: the checksum of chunk IDAT does not match"),
], ids=["text", "empty", "truncated", "gif", "png-bomb", "jpeg-bomb", "blank", "bad-crc"])
def test_bad_pictures_are_refused(client: TestClient, small_model: SmallModel, data: bytes | None,
                                  status: int, reason: str) -> None:
    if data is None:
        data = png_bytes(paper_scan(small_model.digits[0], 300))[:300]
    if data == b"GIF":
        data = gif_bytes()
    if data == b"CRC":  # a real scan whose pixel data is damaged: its checksum says so
        data = bytearray(png_bytes(paper_scan(small_model.digits[0])))
        at = data.index(b"IDAT") + 8
        data[at] ^= 0xFF
        data = bytes(data)
    response = client.post("/predict", files={"file": ("upload.png", data, "image/png")})
    assert_refused(response, status, reason)


def test_multipart_without_a_file_field(client: TestClient) -> None:
    response = client.post("/predict", data={"name": "value"},
                           files={"other": ("x.png", b"x", "image/png")})
    assert_refused(response, 400, 'field named "file"')


def test_unknown_content_type(client: TestClient) -> None:
    response = client.post("/predict", content=b"1,2,3", headers={"content-type": "text/csv"})
    assert_refused(response, 415, "content type text/csv")


def test_a_body_over_the_limit_is_refused_unread(client: TestClient) -> None:
    response = client.post("/predict", content=b"\0" * (limits.MAX_REQUEST_BYTES + 1),
                           headers={"content-type": "image/png"})
    assert_refused(response, 413, "over the limit")


def test_a_streamed_body_is_cut_at_the_limit(client: TestClient) -> None:
    """Without Content-Length (chunked), reading stops once the limit is passed."""
    def body():
        for _ in range(limits.MAX_REQUEST_BYTES // 65536 + 50):
            yield b"\0" * 65536

    response = client.post("/predict", content=body(), headers={"content-type": "image/png"})
    assert_refused(response, 413, "over the limit")


def pixels_of(value: float) -> list[list[float]]:
    rows = np.zeros((28, 28)).tolist()
    rows[5][5] = value
    return rows


@pytest.mark.parametrize(("document", "status", "reason"), [
    ("[[1, 2], [3, 4]", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ("[" * 5_000 + "]" * 5_000, 400, "not valid JSON"),  # nesting too deep
    ("[" * 100_000 + "]" * 100_000, 422, "refused unparsed"),  # more arrays than digits need
    ('{"pixels": [' + "[[]]," * 10_000 + "[[]]]}", 422, "refused unparsed"),
    ('{"pixels": [' + "0," * 500_000 + "0]}", 422, "refused unparsed"),
    ([[0] * 28] * 28, 422, 'expected a JSON object {"pixels"'),
    ({"image": [[0] * 28] * 28}, 422, 'expected a JSON object {"pixels"'),
    ({"pixels": [[0] * 28] * 27}, 422, "got shape 27x28"),
    ({"pixels": [0] * 784}, 422, "got shape 784"),
    ({"pixels": [[[[0] * 28] * 28]]}, 422, "got shape 1x1x28x28"),
    ({"pixels": 7}, 422, "got shape"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27]}, 422, "different lengths"),
    ({"pixels": [["0"] * 28] * 28}, 422, "strings"),
    ({"pixels": [[None] * 28] * 28}, 422, "nulls"),
    ({"pixels": [[True] * 28] * 28}, 422, "booleans"),
    ({"pixels": {"a": 1}}, 422, "objects"),
    ({"pixels": pixels_of(1e30)}, 422, "outside 0..255"),
    ({"pixels": pixels_of(2 ** 70)}, 422, "huge integers"),  # beyond int64: object array
    ({"pixels": pixels_of(-1)}, 422, "outside 0..255"),
    ({"pixels": pixels_of(256)}, 422, "outside 0..255"),
    ({"pixels": []}, 422, "empty batch"),
    ({"pixels": [[[0] * 28] * 28] * (limits.MAX_BATCH_IMAGES + 1)}, 422, "over the limit"),
], ids=["truncated", "not-utf8", "deep", "many-arrays", "empty-arrays", "many-numbers",
        "bare-array", "no-pixels", "27x28", "flat", "4d",
        "scalar", "ragged", "strings", "nulls", "booleans", "object", "huge", "bigint",
        "negative", "256", "empty-batch", "batch-over-limit"])
def test_bad_json_is_refused(client: TestClient, document: object, status: int,
                             reason: str) -> None:
    body = document if isinstance(document, str | bytes) else json.dumps(document)
    response = client.post("/predict", content=body,
                           headers={"content-type": "application/json"})
    assert_refused(response, status, reason)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client: TestClient, value: str) -> None:
    body = json.dumps({"pixels": pixels_of(1.5)}).replace("1.5", value)  # Python's JSON reads them
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert_refused(response, 422, "NaN or infinite")


def test_the_server_keeps_serving_after_bad_input(client: TestClient,
                                                  small_model: SmallModel) -> None:
    for _ in range(3):
        client.post("/predict", content=b"{", headers={"content-type": "application/json"})
        client.post("/predict", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")})
        client.post("/predict", content=png_claiming(60_000, 60_000),
                    headers={"content-type": "image/png"})
    response = post_json(client, {"pixels": small_model.digits[0].tolist()})
    assert response.status_code == 200 and response.json()["label"] == small_model.predicted[0]
    assert client.get("/health").json()["status"] == "ok"


# --- page, docs ---------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="pad"' in page.text and 'id="file"' in page.text and 'id="clear"' in page.text
    for name in ("page.js", "page.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert "http://" not in asset.text and "https://" not in asset.text
    assert "http://" not in page.text and "https://" not in page.text


def test_head_nosniff_and_redirects_that_ignore_the_host_header(client: TestClient) -> None:
    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    for path in ("/", "/health", "/static/page.js", "/docs"):
        assert client.get(path).headers["x-content-type-options"] == "nosniff"
    assert_refused(client.post("/predict", content=b"x", headers={"content-type": "text/csv"}),
                   415, "text/csv")
    # a Host of another name is refused outright (421: guard.foreign_host); one it answers
    # is still not echoed into a redirect
    assert client.get("/static", headers={"host": "evil.example"}).status_code == 421
    redirect = client.get("/static", headers={"host": "localhost:1234"}, follow_redirects=False)
    assert 300 <= redirect.status_code < 400
    assert redirect.headers["location"] == "/static/"
    assert redirect.headers["x-content-type-options"] == "nosniff"


def test_docs_work_offline(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text and "https://" not in docs.text
    for path in ("/static-offline-docs/swagger-ui-bundle.js",
                 "/static-offline-docs/swagger-ui.css"):
        assert client.get(path).status_code == 200
    assert "https://" not in client.get("/redoc").text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data", "image/png", "image/jpeg"}
    assert {"400", "413", "415", "422"} <= set(schema["paths"]["/predict"]["post"]["responses"])


def test_one_policy_on_every_html_answer_and_nothing_framable(client: TestClient) -> None:
    """The page by either of its paths, and the API docs: the same Content-Security-Policy,
    frame-ancestors 'none' and X-Frame-Options; the docs' inline script allowed by its hash
    only, so that no other inline script may run."""
    import base64
    import hashlib

    policies = set()
    for path in ("/", "/static/index.html", "/docs", "/redoc"):
        answer = client.get(path)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(
            "text/html"), path
        policies.add(answer.headers["content-security-policy"])
        assert answer.headers["x-frame-options"] == "DENY", path
    policy, = policies
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    script_src = next(part for part in policy.split(";") if "script-src" in part)
    assert "unsafe-inline" not in script_src and "unsafe-eval" not in script_src
    inline = client.get("/docs").text.split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in script_src
    assert "content-security-policy" not in client.get("/health").headers


def test_a_model_that_answers_nan_or_infinity_is_a_500_with_a_reason() -> None:
    def broken(pixels):
        probabilities = np.full((len(pixels), 10), 0.1, np.float32)
        probabilities[pixels.reshape(len(pixels), -1).max(axis=1) > 250] = np.inf
        probabilities[pixels.reshape(len(pixels), -1).max(axis=1) < 150] = np.nan
        return probabilities

    with TestClient(api.create_app(stand_in(broken))) as test_client:
        bright, dim, fine = stroke(), stroke() * 100 / 255, stroke() * 200 / 255
        for pixels in (bright, dim, [fine, dim]):
            response = post_json(test_client, {"pixels": np.asarray(pixels).tolist()})
            assert response.status_code == 500, response.text
            assert response.json() == {"detail": "the model answered NaN or infinite "
                                                 "probabilities (a broken model file?)"}
        assert post_json(test_client, {"pixels": fine.tolist()}).status_code == 200


def test_requests_beyond_the_limit_in_progress_are_told_the_server_is_busy() -> None:
    """Requests in progress are bounded (idle connections are not requests)."""
    from starlette.responses import PlainTextResponse

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await PlainTextResponse("done")(scope, receive, send)

    app = guard.GuardRequests(slow_app, max_requests=2)
    scope = {"type": "http", "method": "GET", "path": "/health", "headers": []}

    async def three_at_once() -> list[dict]:
        async def one() -> dict:
            answer: dict = {}

            async def send(message):
                if message["type"] == "http.response.start":
                    answer["status"] = message["status"]

            await app(scope, lambda: asyncio.sleep(3600), send)
            return answer

        tasks = [asyncio.ensure_future(one()) for _ in range(3)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*tasks)

    statuses = sorted(answer["status"] for answer in asyncio.run(three_at_once()))
    assert statuses == [200, 200, 503]
    assert app.in_progress == 0


# --- batching -----------------------------------------------------------------------------------


def stroke() -> np.ndarray:
    """A 28x28 of integer pixels, black but for one white bar: not blank."""
    pixels = np.zeros((28, 28), dtype=int)
    pixels[6:22, 12:16] = 255
    return pixels


class SlowModel:
    """Stands in for a Keras model: 100 ms a call whatever the batch, calls counted."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, pixels, training=False):
        with self.lock:
            self.calls += 1
        time.sleep(0.25)  # long enough for all requests to queue, even on a busy machine
        # Each image's "probabilities" peak at its first pixel, so answers can be matched.
        probabilities = np.full((len(pixels), 10), 0.01, np.float32)
        probabilities[np.arange(len(pixels)), pixels[:, 0, 0].astype(int) % 10] = 0.91
        return probabilities


async def concurrent_predictions(app, count: int) -> list[dict]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as http:
        async def one(index: int) -> dict:
            pixels = stroke()
            pixels[0, 0] = 10 + index
            response = await http.post("/predict", json={"pixels": pixels.tolist()})
            assert response.status_code == 200, response.text
            return response.json()

        return await asyncio.gather(*(one(index) for index in range(count)))


@pytest.mark.parametrize("max_model_batch", [batching.MAX_MODEL_BATCH, 1])
def test_requests_that_arrive_together_share_a_model_call(max_model_batch: int) -> None:
    model = SlowModel()
    app = api.create_app(stand_in(model), max_model_batch=max_model_batch)
    answers = asyncio.run(concurrent_predictions(app, 24))
    assert [answer["label"] for answer in answers] == [index % 10 for index in range(24)]
    if max_model_batch == 1:
        assert model.calls == 24
    else:
        # the first request alone, then the rest while it ran, in at most 16 bodies at a time
        # (MAX_BODIES); one call more where a loaded machine parsed late
        assert model.calls <= 4
    assert app.state.batcher.images == 24 and app.state.batcher.model_calls == model.calls


def test_a_collection_window_gathers_requests_that_arrive_close_together() -> None:
    calls = []

    def model(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return np.repeat(pixels[:, :1, 0], 10, axis=1)

    async def two_requests_10_ms_apart(batcher: batching.ModelBatcher) -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.predict(np.full((2, 28, 28), 1.0)))
        await asyncio.sleep(0.01)
        second = batcher.predict(np.full((3, 28, 28), 2.0))
        return await asyncio.gather(first, second)

    for window_seconds, expected_calls in ((0.1, [5]), (0.0, [2, 3])):
        calls.clear()
        batcher = batching.ModelBatcher(model, window_seconds=window_seconds)
        first, second = asyncio.run(two_requests_10_ms_apart(batcher))
        batcher.close()
        assert calls == expected_calls
        assert first.shape == (2, 10) and (first == 1).all()
        assert second.shape == (3, 10) and (second == 2).all()


def test_a_failing_model_fails_its_requests_only() -> None:
    calls = []

    def flaky(pixels, training=False):
        calls.append(len(pixels))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return np.full((len(pixels), 10), 0.1, np.float32)

    with TestClient(api.create_app(stand_in(flaky)), raise_server_exceptions=False
                    ) as test_client:
        document = {"pixels": stroke().tolist()}
        assert post_json(test_client, document).status_code == 500
        assert post_json(test_client, document).status_code == 200


# --- the command --------------------------------------------------------------------------------


def test_serve_listens_on_loopback_by_default() -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 8000, None)


def test_serve_without_a_model_says_so(tmp_path, capsys) -> None:
    status = cli.main(["serve", "--model", str(tmp_path / "missing.keras")])
    assert status == cli.EXIT_NO_MODEL
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_create_app_loads_a_model_file_once(small_model: SmallModel, monkeypatch, kind) -> None:
    path = small_model.onnx_path if kind == "onnx" else small_model.path
    loads = []
    real_load = inference.load
    monkeypatch.setattr(inference, "load", lambda path, threads=None: loads.append(path)
                        or real_load(path, threads))
    with TestClient(api.create_app(path)) as test_client:
        for digit, label in zip(small_model.digits[:3], small_model.predicted, strict=False):
            response = post_json(test_client, {"pixels": digit.tolist()})
            assert response.status_code == 200 and response.json()["label"] == label
        assert test_client.get("/health").json()["model"] == str(path)
    assert loads == [path]


def test_the_keras_model_keeps_the_test_time_shifts_in_one_graph(small_model: SmallModel
                                                                  ) -> None:
    """A saved model that averages over shifted digits (model.test_time_shifts) compiles into
    one graph, for every batch size, that answers as the eager model does."""
    from mnist_pipeline.model import build_network, export_model
    from mnist_pipeline.params import ModelParams

    model = export_model(build_network(ModelParams(conv_filters=(4, 8), dense_units=16)), 8)
    classifier = inference.from_keras_model(model)
    for count in (1, 7, 20):
        batch = small_model.digits[:count]
        assert np.allclose(classifier.run_batch(batch), np.asarray(model(batch)), atol=1e-6)


# --- TensorFlow Serving's REST API -------------------------------------------------------------


def test_the_tf_serving_route_answers_as_tf_serving_does(client: TestClient,
                                                         small_model: SmallModel) -> None:
    instances = small_model.digits[:5]
    response = client.post(f"/v1/models/{tf_serving.TF_SERVING_NAME}:predict",
                           json={"instances": instances.astype(int).tolist()})
    assert response.status_code == 200, response.text
    predictions = np.array(response.json()["predictions"])
    assert predictions.shape == (5, 10) and list(response.json()) == ["predictions"]
    np.testing.assert_allclose(predictions, np.asarray(small_model.model(instances)), atol=1e-5)
    # the same pixels through /predict: the same probabilities
    batch = post_json(client, {"pixels": instances.astype(int).tolist()}).json()
    np.testing.assert_allclose(predictions, [row["probabilities"] for row in
                                             batch["predictions"]], atol=1e-6)
    status = client.get(f"/v1/models/{tf_serving.TF_SERVING_NAME}").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize("body, content_type, status, reason", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"pixels": []}', "application/json", 422, 'expected a JSON object {"instances"'),
    (json.dumps({"instances": np.zeros((28, 28)).tolist()}).encode(), "application/json", 422,
     "instances: expected a list of 28x28 arrays, got shape 28x28"),
    (json.dumps({"instances": np.zeros((257, 28, 28), int).tolist()}).encode(),
     "application/json", 422, "batch of 257 images is over the limit of 256"),
    (json.dumps({"instances": (np.zeros((1, 28, 28)) + 300).tolist()}).encode(),
     "application/json", 422, "outside 0..255"),
    (b"\x89PNG", "image/png", 415, "send application/json"),
])
def test_the_tf_serving_route_refuses_bad_bodies_in_one_line(client: TestClient, body: bytes,
                                                              content_type: str, status: int,
                                                              reason: str) -> None:
    response = client.post(f"/v1/models/{tf_serving.TF_SERVING_NAME}:predict", content=body,
                           headers={"content-type": content_type})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert reason in error and "\n" not in error, error


# --- what a client may hold: the body deadline and the turns -----------------------------------


def guarded(body_timeout: float, max_bodies: int = 16):
    """GuardRequests around an application that reads the whole body, then answers 200."""
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import PlainTextResponse

    async def app(scope, receive, send):
        body = await StarletteRequest(scope, receive).body()
        await PlainTextResponse(f"{len(body)} bytes")(scope, receive, send)

    return guard.GuardRequests(app, max_bodies=max_bodies, body_timeout=body_timeout)


def scope_of(length: int) -> dict:
    return {"type": "http", "method": "POST", "path": "/predict", "client": ("127.0.0.1", 1),
            "headers": [(b"content-length", str(length).encode()),
                        (b"content-type", b"image/png")]}


async def exchange(app, length: int, chunks: list[bytes], stall: bool) -> dict:
    """Send ``chunks`` of a body declared ``length`` long, then stall (or not); the answer."""
    queue = list(chunks)
    answer: dict = {"status": None, "headers": {}, "body": b""}

    async def receive():
        if queue:
            return {"type": "http.request", "body": queue.pop(0), "more_body": bool(queue)
                    or stall}
        await asyncio.sleep(3600)  # a client that never sends its last byte

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = dict(message["headers"])
        else:
            answer["body"] += message.get("body", b"")

    await app(scope_of(length), receive, send)
    return answer


def test_a_stalled_body_is_cut_off_at_the_deadline_with_408() -> None:
    app = guarded(body_timeout=0.3)
    start = time.monotonic()
    answer = asyncio.run(exchange(app, 100, [b"x" * 99], stall=True))
    assert 0.25 < time.monotonic() - start < 3
    assert answer["status"] == 408 and b"did not arrive within 0.3 s" in answer["body"]
    assert answer["headers"][b"connection"] == b"close"
    complete = asyncio.run(exchange(guarded(body_timeout=5), 100, [b"x" * 60, b"x" * 40],
                                    stall=False))
    assert complete["status"] == 200 and complete["body"] == b"100 bytes"


def test_uploads_beyond_the_turns_wait_then_are_told_the_server_is_busy() -> None:
    app = guarded(body_timeout=0.4, max_bodies=2)

    async def three_stalled_then_one_more() -> list[dict]:
        stalled = [asyncio.ensure_future(exchange(app, 100, [b"x"], stall=True))
                   for _ in range(3)]
        answers = await asyncio.gather(*stalled)
        answers.append(await exchange(app, 5, [b"hello"], stall=False))  # turns given back
        return answers

    answers = asyncio.run(three_stalled_then_one_more())
    assert sorted(answer["status"] for answer in answers[:3]) == [408, 408, 503]
    assert answers[3]["status"] == 200


def test_refusals_before_the_application_answer_tf_serving_in_its_shape(
        client: TestClient) -> None:
    over = b"\0" * (limits.MAX_REQUEST_BYTES + 1)
    response = client.post(f"/v1/models/{tf_serving.TF_SERVING_NAME}:predict", content=over,
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    assert response.headers["connection"] == "close"
    assert_refused(client.post("/predict", content=over,
                               headers={"content-type": "application/json"}), 413, "over the")


def test_the_json_structure_is_counted_before_parsing() -> None:
    hostile = b'{"pixels": [' + b"[[]]," * 1_000_000 + b"[[]]]}"  # 5 MB
    start = time.perf_counter()
    with pytest.raises(guard.Refused, match="refused unparsed"):
        bodies.pixels_from_json(hostile)
    assert time.perf_counter() - start < 0.5  # parsing it took 1.5 s
    largest = np.full((limits.MAX_BATCH_IMAGES, 28, 28), 0.123456789)  # long numbers
    largest[:, 6:22, 12:16] = 254.987654321  # a stroke: not blank
    pixels, batch = bodies.pixels_from_json(json.dumps({"pixels": largest.tolist()}).encode())
    assert batch and pixels.shape == (limits.MAX_BATCH_IMAGES, 28, 28)
