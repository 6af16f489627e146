"""Temperature scaling: probabilities whose confidence means what it says. numpy and scipy.

Label smoothing (``train.label_smoothing``) and the averaging over shifted copies
(``model.test_time_shifts``) both pull every probability towards the middle: a model right
on 99.8% of its test digits said 0.90 on average. One number fixes that without changing
any label (Guo et al., "On Calibration of Modern Neural Networks", 2017): the temperature
``T`` by which the logits of the digit and of each shifted copy are divided before their
softmax, fitted after training on the validation split by minimizing the negative
log-likelihood of what the saved model answers, ``mean_k softmax(z_k / T)``. The saved model
carries ``T`` as a layer (:func:`mnist_pipeline.model.export_model`).

A small validation split needs one more thing. `make sample` validates on 250 digits, and
a model right on all of them but one (right, too, on some of that one's shifted copies) has
the lowest NLL at T -> 0: certain of every answer, each copy a hard vote. So the NLL is taken
against labels smoothed by a pseudo-count of one (Laplace's rule of succession): weight
``1 - e`` on the label and ``e / classes`` on each class, ``e = 1 / (n + 2)`` for ``n``
digits. It costs nothing on a large split (6,000 digits: e = 0.0002, far below any model's
error rate) and keeps a small one where its evidence puts it: on the `make sample` model,
T = 0.54 (0.05 without), against 0.45 fitted on 10,000 held-out MNIST digits
(benchmarks/README.md).

The same validation digits then give the model its ``uncertain`` threshold
(:func:`mnist_pipeline.uncertainty.fit_min_confidence`) on the calibrated probabilities:
:func:`fit` does both from logits (numpy), :func:`calibrate_network` from a trained network
(Keras, imported only there), and the saved model carries both
(:func:`mnist_pipeline.model.export_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from mnist_pipeline import uncertainty

# The search range of T: far wider than any fitted value (0.3..3 in practice), narrow enough
# that exp() cannot overflow on logits of a few dozen.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# T is rounded to this many decimals: the saved model is a function of the weights and of
# this value only, so a rerun gives the same bytes, and the NLL is flat there anyway.
TEMPERATURE_DECIMALS = 4
EPSILON = 1e-7  # probabilities are clipped as Keras's cross-entropy does


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature, the validation NLL (natural log) before and after it, and the
    ``uncertain`` threshold fitted on the calibrated probabilities (:func:`fit`; the default
    :data:`mnist_pipeline.uncertainty.MIN_CONFIDENCE` from :func:`fit_temperature` alone)."""

    temperature: float
    nll_before: float
    nll_after: float
    min_confidence: float = uncertainty.MIN_CONFIDENCE


def averaged_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``mean_k softmax(logits[k] / temperature)``: logits (copies, N, classes) -> (N, classes)
    float64, as the saved model computes it. A 2-D (N, classes) array is one copy."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2:
        logits = logits[np.newaxis]
    if logits.ndim != 3:
        raise ValueError(f"expected logits of shape (copies, N, classes), got {logits.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exponentials = np.exp(scaled)
    return (exponentials / exponentials.sum(axis=-1, keepdims=True)).mean(axis=0)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean -log p(true label) of :func:`averaged_probabilities` at ``temperature``."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = averaged_probabilities(logits, temperature)
    if labels.shape != (len(probabilities),):
        raise ValueError(f"{labels.size} labels for {len(probabilities)} rows of logits")
    chosen = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0)
    return float(-np.log(chosen).mean())


def smoothed_negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                                     temperature: float = 1.0) -> float:
    """Mean cross-entropy of :func:`averaged_probabilities` at ``temperature`` against the
    labels smoothed by a pseudo-count of one: ``1 - e`` on the label, ``e / classes`` on
    every class, ``e = 1 / (n + 2)`` (see the module's docstring)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = averaged_probabilities(logits, temperature)
    if labels.shape != (len(probabilities),):
        raise ValueError(f"{labels.size} labels for {len(probabilities)} rows of logits")
    log_probabilities = np.log(np.clip(probabilities, EPSILON, 1.0))
    prior = 1.0 / (len(labels) + 2)
    chosen = log_probabilities[np.arange(len(labels)), labels]
    return float(-((1 - prior) * chosen + prior * log_probabilities.mean(axis=1)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimizes
    :func:`smoothed_negative_log_likelihood` on (``logits``, ``labels``), rounded to
    ``TEMPERATURE_DECIMALS``; a bounded 1-D search over log T (deterministic). The NLLs
    recorded before and after are the plain ones (:func:`negative_log_likelihood`).

    Raises ValueError for no labels: a temperature fitted on nothing means nothing.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("no validation digits to fit the temperature on")
    result = minimize_scalar(
        lambda log_t: smoothed_negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)), method="bounded",
        options={"xatol": 1e-5})
    temperature = round(float(np.exp(result.x)), TEMPERATURE_DECIMALS)
    return Calibration(
        temperature=temperature,
        nll_before=round(negative_log_likelihood(logits, labels, 1.0), 6),
        nll_after=round(negative_log_likelihood(logits, labels, temperature), 6),
    )


def fit(logits: np.ndarray, labels: np.ndarray,
        sources: Mapping[str, np.ndarray] | None = None) -> Calibration:
    """The temperature (:func:`fit_temperature`) and then the ``uncertain`` threshold
    (:func:`mnist_pipeline.uncertainty.fit_min_confidence`) of the answers at that
    temperature, from the validation ``logits`` (copies, N, classes) and ``labels`` (N,).

    ``sources``: {name: row indices (or a boolean mask) of the validation digits}, so that
    the threshold spares each source's right answers; None treats them as one source.
    """
    fitted = fit_temperature(logits, labels)
    probabilities = averaged_probabilities(logits, fitted.temperature)
    labels = np.asarray(labels, dtype=np.int64)
    rows = {"val": slice(None)} if sources is None else sources
    threshold = uncertainty.fit_min_confidence(
        {name: (probabilities[index], labels[index]) for name, index in rows.items()})
    return replace(fitted, min_confidence=threshold)


def calibrate_network(network: Any, test_time_shifts: int,
                      val_data: tuple[np.ndarray, np.ndarray],
                      sources: Mapping[str, np.ndarray] | None = None,
                      batch_size: int = 1024) -> Calibration:
    """:func:`fit` on a trained ``network`` (from :func:`mnist_pipeline.model.build_network`)
    and its validation digits ``val_data`` (images in [0, 1] (N, 28, 28), labels (N,)): the
    logits of the digits and of their ``test_time_shifts`` shifted copies, as the saved model
    computes them. What the train stage calls before it saves the model; any stage that
    changes the weights afterwards calls it again. Imports Keras."""
    from mnist_pipeline.model import export_logits, to_pixels

    images, labels = val_data
    logits = export_logits(network, test_time_shifts).predict(
        to_pixels(images), batch_size=batch_size, verbose=0)
    return fit(np.stack(logits) if isinstance(logits, list) else logits, labels, sources)
