"""What people use the trained model through: ``mnist-pipeline predict``, ``serve`` and its page.

It needs no TensorFlow for an ONNX model (:mod:`mnist_pipeline.inference`), so
``pip install 'mnist-pipeline[serve]'`` is enough to run it. One pipeline stage uses two of its
modules: preprocess makes the pen-drawn digits and the labelled pictures MNIST-style with
:mod:`~mnist_pipeline.app.pictures` and :mod:`~mnist_pipeline.app.digit_image`, the code every
picture sent to the model goes through, so that training sees what serving sees.
"""
