"""Input pipeline, optimizer and schedule, and repeatable training on real digits."""

import dataclasses

import keras
import numpy as np
import pytest

from mnist_pipeline import training
from mnist_pipeline.metrics import classification_metrics, cross_entropy
from mnist_pipeline.model import build_network
from mnist_pipeline.params import AugmentationParams, ModelParams, TrainParams

TINY_MODEL = ModelParams(conv_filters=(8,), dense_units=32)
TINY_TRAIN = TrainParams(epochs=2, batch_size=32, learning_rate=0.003, warmup_epochs=1,
                         early_stopping_patience=0)


@pytest.fixture(scope="module")
def splits(sample_digits):
    """Real digits, 20 a class for training and 5 a class for validation, as prepared."""
    images, labels = sample_digits
    rng = np.random.default_rng(0)
    train, val = [], []
    for digit in range(10):
        chosen = rng.permutation(np.flatnonzero(labels == digit))
        train += list(chosen[:20])
        val += list(chosen[20:25])
    prepared = (images / 255).astype(np.float32)
    train, val = rng.permutation(train), rng.permutation(val)
    return (prepared[train], labels[train]), (prepared[val], labels[val])


def test_dataset_batches_one_hot_labels(splits):
    images, labels = splits[0]
    dataset = training.make_dataset(images, labels, batch_size=64, shuffle_seed=1)
    batches = list(dataset)
    assert [len(x) for x, _ in batches] == [64, 64, 64, 8]
    x, y = batches[0]
    assert x.shape == (64, 28, 28) and y.shape == (64, 10)
    np.testing.assert_array_equal(np.asarray(y).sum(axis=1), 1)
    # each epoch reshuffles; unshuffled keeps the order
    assert not np.array_equal(np.asarray(batches[0][1]), np.asarray(next(iter(dataset))[1]))
    plain = next(iter(training.make_dataset(images, labels, batch_size=64)))
    np.testing.assert_array_equal(np.asarray(plain[1]).argmax(1), labels[:64])


def test_warmup_cosine_rises_then_decays_to_zero():
    config = TrainParams(epochs=10, learning_rate=0.01, lr_schedule="warmup_cosine",
                         warmup_epochs=2)
    schedule = training.learning_rate(config, steps_per_epoch=5)
    rates = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert rates[0] == pytest.approx(0.0, abs=1e-9)
    assert rates[1] == pytest.approx(0.005)  # halfway through warmup
    assert rates[2] == pytest.approx(0.01)  # peak
    assert rates[2] > rates[3] > rates[4]
    assert rates[4] == pytest.approx(0.0, abs=1e-9)
    no_warmup = training.learning_rate(dataclasses.replace(config, warmup_epochs=0), 5)
    assert float(no_warmup(0)) == pytest.approx(0.01)
    constant = dataclasses.replace(config, lr_schedule="constant")
    assert training.learning_rate(constant, 5) == 0.01


def test_cosine_restarts_decays_to_zero_once_per_cycle():
    config = TrainParams(epochs=10, learning_rate=0.01, lr_schedule="cosine_restarts",
                         lr_cycles=2)
    schedule = training.learning_rate(config, steps_per_epoch=5)
    rates = [float(schedule(step)) for step in range(50)]
    assert rates[0] == pytest.approx(0.01) and rates[25] == pytest.approx(0.01)  # restarts
    assert rates[12] == pytest.approx(0.005, rel=0.1)  # mid-cycle
    assert rates[37] == pytest.approx(rates[12], rel=1e-3)  # the second cycle repeats the first
    assert rates[24] < 1e-4 and rates[49] < 1e-4  # each cycle ends near 0
    assert all(a > b for a, b in zip(rates[:24], rates[1:25], strict=True))
    one_cycle = training.learning_rate(dataclasses.replace(config, lr_cycles=1), 5)
    assert float(one_cycle(25)) == pytest.approx(0.005)
    assert float(one_cycle(49)) < 1e-4


@pytest.mark.parametrize("name, cls", [
    ("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
    ("sgd", keras.optimizers.SGD),
])
def test_optimizers(name, cls):
    config = TrainParams(optimizer=name, weight_decay=0.01, lr_schedule="constant")
    optimizer = training.make_optimizer(config, steps_per_epoch=10)
    assert type(optimizer) is cls
    if name == "adamw":
        assert optimizer.weight_decay == pytest.approx(0.01)
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.99)
    no_average = training.make_optimizer(dataclasses.replace(config, ema_momentum=0.0), 10)
    assert not no_average.use_ema


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


@pytest.mark.parametrize("stop_after", [None, 2])
def test_the_model_ends_with_the_validated_weight_average(splits, stop_after):
    """Validation sees the moving average, and the trained model is that average, also when
    a callback stops fit before its last epoch (Keras's SwapEMAWeights alone leaves the raw
    weights then)."""
    config = dataclasses.replace(TINY_TRAIN, epochs=3, ema_momentum=0.5,
                                 augmentation=AugmentationParams(0, 0, 0))
    callbacks = [_StopAfter(stop_after)] if stop_after else []
    training.set_determinism(5)
    network = build_network(TINY_MODEL)
    history = training.train(network, *splits, config, 5, callbacks=callbacks, verbose=0)
    assert len(history.history["val_loss"]) == (stop_after or 3)
    val_loss, _ = network.evaluate(training.make_dataset(*splits[1], batch_size=32), verbose=0)
    assert val_loss == pytest.approx(history.history["val_loss"][-1], rel=1e-5)

    training.set_determinism(5)
    raw = build_network(TINY_MODEL)
    raw_history = training.train(raw, *splits, dataclasses.replace(config, ema_momentum=0.0),
                                 5, callbacks=callbacks, verbose=0)
    # same seed, same steps: only the averaging differs
    assert raw_history.history["loss"][0] == pytest.approx(history.history["loss"][0])
    assert raw_history.history["val_loss"][-1] != pytest.approx(
        history.history["val_loss"][-1], rel=1e-3)


def _train_and_score(splits, seed, train_config=TINY_TRAIN):
    training.set_determinism(seed)
    network = build_network(TINY_MODEL)
    history = training.train(network, *splits, train_config, seed, verbose=0)
    val_images, val_labels = splits[1]
    probabilities = network.predict(val_images, verbose=0)
    scores = {**classification_metrics(val_labels, probabilities.argmax(1)),
              "loss": cross_entropy(val_labels, probabilities)}
    return history.history, scores


def test_same_seed_same_results_different_seed_different(splits):
    first_history, first_scores = _train_and_score(splits, seed=7)
    second_history, second_scores = _train_and_score(splits, seed=7)
    assert first_history == second_history
    assert first_scores == second_scores
    assert set(first_history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    other_history, _ = _train_and_score(splits, seed=8)
    assert other_history["loss"] != first_history["loss"]


def test_training_learns_and_early_stopping_stops(splits):
    config = dataclasses.replace(TINY_TRAIN, epochs=12, lr_schedule="constant",
                                 early_stopping_patience=1,
                                 augmentation=AugmentationParams(0, 0, 0))
    history, scores = _train_and_score(splits, seed=3, train_config=config)
    assert len(history["loss"]) < 12  # stopped early
    assert history["loss"][-1] < history["loss"][0]
    # restored weights are the best epoch's
    assert scores["accuracy"] == pytest.approx(max(history["val_accuracy"]), abs=1e-6)


def test_epoch_lines_print_a_few_lines_for_a_whole_training(capsys):
    """The train stage's progress: the first epoch, every twelfth of 60 (the last among them);
    Keras's verbose=2 would print 120 lines."""
    from mnist_pipeline.training import EpochLines

    lines = EpochLines(60)
    for epoch in range(60):
        lines.on_epoch_begin(epoch)
        lines.on_epoch_end(epoch, {"loss": 0.5, "accuracy": 0.9, "val_loss": 0.6,
                                   "val_accuracy": 0.8, "learning_rate": 0.001})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in printed] == [
        "epoch 1/60", *(f"epoch {n}/60" for n in range(12, 61, 12))]
    assert printed[-1].startswith("train: epoch 60/60: accuracy 0.9000, loss 0.5000, "
                                  "val_accuracy 0.8000, val_loss 0.6000 (")
