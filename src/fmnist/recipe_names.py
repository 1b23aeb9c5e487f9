"""The recipe's choices, apart from recipe.py so that the config can check them without importing Keras."""

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "onecycle", "cosine")
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}  # --jit-compile NAME: Keras' `compile(jit_compile=...)`
