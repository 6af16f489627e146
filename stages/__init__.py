"""The pipeline's stage scripts: dvc.yaml runs each as `python stages/<name>.py`.

A package only so that tests can import a stage and call its ``main()``.
"""
