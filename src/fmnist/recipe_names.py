"""The recipe's choices, apart from recipe.py so that the config can check them without importing Keras."""

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle", "cosine")
