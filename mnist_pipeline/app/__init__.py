"""What people use the trained model through: ``mnist-pipeline predict``, ``serve`` and its page.

No pipeline stage imports this package. It needs no TensorFlow for an ONNX model
(:mod:`mnist_pipeline.inference`), so ``pip install 'mnist-pipeline[serve]'`` is enough to run it.
"""
