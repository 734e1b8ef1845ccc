"""What a permutation acts on, and applying one: the first stage of every matching.

``_spec`` (:class:`~gamfsolve.PermutationSpec`: which group permutes which axis), ``_builders``
(specs that read like the network), ``_heads`` (composed axes such as attention heads seen as
plain axes), ``_validate`` (the one check of models against a spec) and ``_permute`` (permutations
or soft plans applied to parameter axes). The public names are re-exported by :mod:`gamfsolve`.
"""
