"""The matching methods and the projectors they share.

``_assign`` (projectors onto permutations: Sinkhorn and Hungarian), ``_gamf`` (graduated
assignment model fusion), ``_weight_matching`` (Git Re-Basin weight matching, MergeMany) and
``_ot`` (OTFusion-style optimal transport). Each method registers itself with
:func:`gamfsolve.match` when imported (``import gamfsolve`` imports all three).
"""
