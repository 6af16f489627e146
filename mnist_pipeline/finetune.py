"""Learn a round of corrections: fine-tune the base model on them, rehearsing its own digits.

The base model (the train stage's, on every digit of every source) stays as it is; the
finetune stage starts from its weights and trains a few short epochs in which each
correction appears ``repeats`` times among ``replay`` digits drawn anew from the base's own
training split (rehearsal: what keeps the rest from being forgotten). Batch normalization is
frozen, so that a few hundred pictures of one writer do not move the statistics the base
learned from tens of thousands, and with ``layers: head`` so are the convolutions; the
corrections and the replay are augmented alike.

- :func:`network_of`: the trainable network inside a saved pixel-input model;
- :func:`epoch_indices`: which corrections and replay digits one epoch shows;
- :func:`finetune`: the fine-tuning itself, in place.
"""

from __future__ import annotations

import numpy as np

from mnist_pipeline.params import CorrectionsParams

Split = tuple[np.ndarray, np.ndarray]
# The convolution blocks' layers (mnist_pipeline.model.build_network names them block<n>_...):
# frozen when only the head learns.
CONV_BLOCK_PREFIX = "block"


def network_of(saved_model):
    """The logits network that ``saved_model`` (:func:`mnist_pipeline.model.export_model`)
    wraps: images in [0, 1] -> logits. It shares its weights with ``saved_model``."""
    import keras

    nested = [layer for layer in saved_model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected one network inside the saved model, found {len(nested)}: "
                         "not a model written by the train stage")
    return nested[0]


def epoch_indices(corrections: int, replay_pool: int, params: CorrectionsParams,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For one epoch: the index of each correction shown (each ``params.repeats`` times) and
    of the ``params.replay`` replay digits (without repeats, at most the whole pool)."""
    shown = np.repeat(np.arange(corrections), params.repeats)
    replayed = rng.choice(replay_pool, size=min(params.replay, replay_pool), replace=False)
    return shown, np.sort(replayed)


def finetune(network, corrections: Split, replay: Split, params: CorrectionsParams,
             seed: int, label_smoothing: float = 0.0, verbose: int = 2) -> None:
    """Train ``network`` (logits out, images in [0, 1]) in place on ``corrections`` mixed with
    a replay of ``replay`` (both (float32 images in [0, 1], uint8 labels)): ``params.epochs``
    epochs of Adam at ``params.learning_rate``, batch normalization frozen, with the base's
    ``label_smoothing`` (a loss of its own would move every answer's scale, not only the
    corrected ones)."""
    import keras

    from mnist_pipeline.model import build_augmentation
    from mnist_pipeline.training import make_dataset

    if not len(corrections[1]):
        raise ValueError("no corrections to learn")
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # Keras 3: a frozen BN layer also runs in inference mode
        elif params.layers == "head" and layer.name.startswith(CONV_BLOCK_PREFIX):
            layer.trainable = False
    network.compile(optimizer=keras.optimizers.Adam(params.learning_rate),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                              label_smoothing=label_smoothing))
    augmentation = build_augmentation(params.augmentation, seed)
    rng = np.random.default_rng(seed)
    for epoch in range(params.epochs):
        shown, replayed = epoch_indices(len(corrections[1]), len(replay[1]), params, rng)
        images = np.concatenate([corrections[0][shown], replay[0][replayed]])
        labels = np.concatenate([corrections[1][shown], replay[1][replayed]])
        dataset = make_dataset(images, labels, params.batch_size, shuffle_seed=seed + epoch,
                               augmentation=augmentation)
        history = network.fit(dataset, epochs=1, verbose=0, shuffle=False)  # it shuffles itself
        if verbose:
            print(f"finetune: epoch {epoch + 1}/{params.epochs}: {len(shown)} corrections shown "
                  f"among {len(replayed)} replayed digits, loss {history.history['loss'][-1]:.4f}")
