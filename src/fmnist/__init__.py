"""Fashion-MNIST classifiers with Keras 3: data -> models -> train -> evaluate -> predict.

The `fmnist` command (cli.py) is a thin shell over these modules; see README.md.
"""

__version__ = "0.1.0"
