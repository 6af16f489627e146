"""Export stage: the trained model for other runtimes, TensorFlow Serving and onnxruntime.

Reads   models/model.keras (train stage), data/prepared/test_images.npy (the parity check)
Writes  models/serving/: a SavedModel (Keras `model.export`), signature `serving_default`,
        for TF Serving (docs/serving.md, "TensorFlow Serving");
        models/model.onnx: the same model for onnxruntime, what `mnist-pipeline predict` and
        `serve` run without TensorFlow;
        metrics/export.json: onnx_max_difference, onnx_label_agreement of the ONNX model
        against the .keras model on the test digits.
Both take what the .keras file takes, raw pixels 0..255 float32 (N, 28, 28), and answer its
probabilities (N, 10). On a missing or bad model, or an ONNX model whose probabilities differ
by more than export.MAX_PROBABILITY_DIFFERENCE, it prints one line and exits 1; the .onnx
file it refused is removed, so nothing downstream runs a model that was not checked.
"""

import sys

from mnist_pipeline import export, inference, paths, prepared
from mnist_pipeline.fileio import write_json
from mnist_pipeline.model import to_pixels


def main() -> None:
    try:
        model = inference.load_keras_model(paths.MODEL_FILE)
        images, _labels = prepared.load("test")
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"export: {error}")
    export.save_saved_model(model, paths.SERVING_DIR)
    export.save_onnx(model, paths.ONNX_MODEL_FILE)

    pixels = to_pixels(images)
    try:
        parity = export.onnx_parity(inference.from_keras_model(model).probabilities(pixels),
                                    inference.load(paths.ONNX_MODEL_FILE).probabilities(pixels))
        export.check_parity(parity)
    except (export.ParityError, inference.ModelError) as error:
        paths.ONNX_MODEL_FILE.unlink()
        sys.exit(f"export: {paths.ONNX_MODEL_FILE}: {error}")
    write_json(paths.EXPORT_METRICS, parity)
    print(f"export: wrote {paths.SERVING_DIR} and {paths.ONNX_MODEL_FILE} (largest probability "
          f"difference {parity['onnx_max_difference']:.2g} on {len(pixels)} test digits, "
          f"labels agree on {parity['onnx_label_agreement']:.2%})")


if __name__ == "__main__":
    main()
