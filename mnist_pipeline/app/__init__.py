"""What people use the trained model through: ``mnist-pipeline predict``, ``serve`` and its page.

It needs no TensorFlow for an ONNX model (:mod:`mnist_pipeline.inference`), so
``pip install 'mnist-pipeline[serve]'`` is enough to run it. Imports run one way: the app uses
the library (reading pictures, :mod:`~mnist_pipeline.pictures`, and making them MNIST-style,
:mod:`~mnist_pipeline.digit_image`, as preprocess does, so that training sees what serving
sees); nothing in the library imports the app (tests/test_layout.py holds it).
"""
