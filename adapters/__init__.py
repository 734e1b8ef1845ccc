"""Framework adapters, installed as ``gamfsolve.adapters``.

Each adapter flattens a framework's model into named arrays, derives a
:class:`gamfsolve.PermutationSpec`, and writes fused arrays back into a new model.
Import the one you need (``gamfsolve.adapters.torch``, ``.keras``, ``.flower``); importing
this package loads no framework.
"""
