"""The trained model in the formats other runtimes load: TensorFlow SavedModel and ONNX.

Both keep the contract of ``models/model.keras`` (raw pixels 0..255, float32 (N, 28, 28) in,
probabilities (N, 10) out; scaling, test-time shifts and calibration are layers inside), so
whoever loads either file feeds pixels and reads probabilities. The model's ``uncertain``
threshold (a layer of the Keras model, see :func:`mnist_pipeline.model.export_model`) goes
along: into the ONNX model's ``metadata_props`` (key ``min_confidence``, read by
:func:`mnist_pipeline.inference.load`) and into the SavedModel's graph, with a copy in
``assets.extra/mnist_pipeline.json`` for readers without TensorFlow.

The ONNX file is what ``mnist-pipeline predict`` and ``serve`` run by default: onnxruntime
loads it without TensorFlow. :func:`onnx_parity` measures how far it is from the Keras model
on real digits; the export stage refuses a file beyond :data:`MAX_PROBABILITY_DIFFERENCE`.
"""

from __future__ import annotations

import hashlib
import heapq
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline import fileio, inference, uncertainty
from mnist_pipeline.prepared import IMAGE_SHAPE

# Largest |p_onnx - p_keras| over all digits and classes that the export accepts: float32
# round-off is around 1e-7; a wrong conversion (a dropped layer, a transposed kernel) is
# off by far more, and changes labels.
MAX_PROBABILITY_DIFFERENCE = 1e-4
ONNX_INPUT, ONNX_OUTPUT, BATCH_DIMENSION = "pixels", "probabilities", "N"
SAVED_MODEL_METADATA = Path("assets.extra") / "mnist_pipeline.json"
ONNX_DESCRIPTION = ("MNIST digit classifier: pixels float32 (N, 28, 28), raw values 0..255, "
                    "light digit on black -> probabilities float32 (N, 10) of the digits 0-9")


class ParityError(ValueError):
    """The exported model does not answer as the Keras model does."""


def save_saved_model(model: Any, target: Path) -> None:
    """Write ``model`` as a TensorFlow SavedModel folder (signature ``serving_default``),
    atomically: the folder is replaced whole or not at all."""
    with fileio.atomic_directory(target) as temporary:
        model.export(str(temporary), format="tf_saved_model", verbose=False)
        threshold = inference.keras_threshold(model)
        if threshold is not None:  # TF Serving ignores other files in assets.extra
            (temporary / SAVED_MODEL_METADATA).parent.mkdir(exist_ok=True)
            fileio.write_json(temporary / SAVED_MODEL_METADATA,
                              {uncertainty.METADATA_KEY: float(threshold)})


def save_onnx(model: Any, target: Path) -> None:
    """Write ``model`` as an ONNX file with Keras's exporter (tf2onnx), atomically.

    The graph's names are made readable and stable (input ``pixels``, output
    ``probabilities``, batch dimension ``N``) and the contract is written into its doc string,
    so a user of onnxruntime alone sees what to feed.
    """
    import onnx

    model(np.zeros((1, *IMAGE_SHAPE), np.float32))  # Keras exports only a model once called
    with fileio.atomic_path(target) as temporary:
        staged = temporary.with_name(temporary.name + ".onnx")
        try:
            with warnings.catch_warnings():
                # Keras's tf2onnx shim probes `np.object` (keras/src/export/tf2onnx_lib.py),
                # which numpy answers with a FutureWarning: theirs, not ours to act on.
                warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
                model.export(str(staged), format="onnx", verbose=False)
            proto = readable_onnx(onnx.load_model(staged))
            threshold = inference.keras_threshold(model)
            if threshold is not None:  # an older model without one: predict uses the default
                onnx.helper.set_model_props(
                    proto, {uncertainty.METADATA_KEY: repr(float(threshold))})
            onnx.save_model(proto, temporary)
        finally:
            staged.unlink(missing_ok=True)


def readable_onnx(proto: Any) -> Any:
    """The graph with names and an order that depend on its computation only; checked.

    The one input becomes ``pixels``, the one output ``probabilities``, their batch dimension
    ``N``. tf2onnx's other names carry TensorFlow's per-process counters
    (``Reshape_shape__353``) and its node order varies between exports, so the same weights
    exported twice would give different bytes: dvc.lock would record a new hash for the
    same model, a new version of the registered artifact to push and review. Here every
    node is named by a digest of what it computes (its operator, attributes and inputs, back
    to the weights) and the nodes are sorted topologically, ties broken by that name.
    """
    import onnx

    graph = proto.graph
    (graph_input,), (graph_output,) = graph.input, graph.output
    weights = {tensor.name: tensor for tensor in graph.initializer}
    producers = {value: (node, position) for node in graph.node
                 for position, value in enumerate(node.output)}
    keys: dict[str, str] = {graph_input.name: "input", "": ""}

    def key_of(value: str) -> str:
        if value not in keys:
            if value in weights:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(weights[value])
                tensor.name = ""
                keys[value] = digest(b"weight", tensor.SerializeToString())
            else:
                node, position = producers[value]
                keys[value] = f"{node_key(node)}:{position}"
        return keys[value]

    def node_key(node: Any) -> str:
        attributes = b"".join(attribute.SerializeToString() for attribute in
                              sorted(node.attribute, key=lambda attribute: attribute.name))
        return digest(node.op_type.encode(), node.domain.encode(), attributes,
                      *(key_of(value).encode() for value in node.input))

    for node in graph.node:  # constants inside attributes carry tf2onnx's names too
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                attribute.t.name = ""
    names = {value: f"weight_{key_of(value)}" for value in weights}
    nodes: dict[str, Any] = {}
    for node in graph.node:
        key = node_key(node)
        nodes.setdefault(f"{node.op_type}_{key}", node)  # a duplicate computes the same
        for value in node.output:
            names[value] = f"{node.op_type}_{key_of(value)}"
    names.update({graph_input.name: ONNX_INPUT, graph_output.name: ONNX_OUTPUT, "": ""})
    for name, node in nodes.items():
        node.name = name
        node.input[:] = [names[value] for value in node.input]
        node.output[:] = [names[value] for value in node.output]
    tensors = {}
    for value, tensor in weights.items():
        tensor.name = names[value]
        tensors.setdefault(tensor.name, tensor)
    del graph.node[:], graph.initializer[:], graph.value_info[:]  # value_info: old names
    graph.node.extend(topological_order(list(nodes.values()), set(tensors) | {ONNX_INPUT}))
    graph.initializer.extend(tensors[name] for name in sorted(tensors))
    graph_input.name, graph_output.name = ONNX_INPUT, ONNX_OUTPUT
    for value in (graph_input, graph_output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIMENSION
    graph.name, graph.doc_string = "mnist_classifier", ""  # it named a traced function
    proto.doc_string = ONNX_DESCRIPTION
    onnx.checker.check_model(proto)
    return proto


def digest(*parts: bytes) -> str:
    """12 hex digits of SHA-256 over ``parts``, each length-prefixed."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big") + part)
    return hasher.hexdigest()[:12]


def topological_order(nodes: list[Any], available: set[str]) -> list[Any]:
    """``nodes`` so that each comes after the producers of its inputs; ties by name."""
    producer_of = {value: node.name for node in nodes for value in node.output}
    waiting = {node.name: {value for value in node.input
                           if value and value not in available and value in producer_of}
               for node in nodes}
    by_name = {node.name: node for node in nodes}
    consumers: dict[str, list[str]] = {}
    for name, inputs in waiting.items():
        for value in inputs:
            consumers.setdefault(producer_of[value], []).append(name)
    ready = [name for name, inputs in waiting.items() if not inputs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        name = heapq.heappop(ready)
        ordered.append(by_name[name])
        for consumer in consumers.get(name, []):
            waiting[consumer] -= set(by_name[name].output)
            if not waiting[consumer] and consumer not in ready:
                heapq.heappush(ready, consumer)
    if len(ordered) != len(nodes):
        raise ValueError("the ONNX graph has a cycle")
    return ordered


def onnx_parity(keras_probabilities: np.ndarray, onnx_probabilities: np.ndarray
                ) -> dict[str, float | int]:
    """How far the ONNX model's answers are from the Keras model's on the same digits:
    ``onnx_max_difference`` (largest absolute probability difference) and
    ``onnx_label_agreement`` (share of digits given the same label)."""
    if keras_probabilities.shape != onnx_probabilities.shape or not len(keras_probabilities):
        raise ValueError(f"expected two non-empty probability arrays of one shape, got "
                         f"{keras_probabilities.shape} and {onnx_probabilities.shape}")
    difference = np.abs(keras_probabilities.astype(np.float64) - onnx_probabilities)
    agreement = keras_probabilities.argmax(axis=1) == onnx_probabilities.argmax(axis=1)
    return {
        "onnx_max_difference": float(f"{difference.max():.3g}"),
        "onnx_label_agreement": round(float(agreement.mean()), 6),
    }


def check_parity(parity: dict[str, float | int],
                 tolerance: float = MAX_PROBABILITY_DIFFERENCE) -> None:
    """Raise :class:`ParityError` when the exported model answers differently."""
    if not parity["onnx_max_difference"] <= tolerance:  # NaN fails too
        raise ParityError(f"the ONNX model's probabilities differ from the Keras model's by up "
                          f"to {parity['onnx_max_difference']:g} (tolerance {tolerance:g}; "
                          f"labels agree on {parity['onnx_label_agreement']:.2%} of the digits)")
