"""MNIST pipeline on DVC: the library behind the stages, the tests and `mnist-pipeline`."""

__version__ = "0.1.0"
