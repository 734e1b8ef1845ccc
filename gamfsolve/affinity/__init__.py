"""How alike two models' units are: features, edge kernels, affinities and the GAMF gradient.

``_features`` (every parameter slice of one unit, neighbouring axes in the common order),
``_kernels`` (the edge-affinity kernels: exact, compiled, factorised, series; Numba optional),
``_affinity`` (one group's unit affinity between two models, kernel widths), ``_scores`` (the
gradient of the GAMF objective for one group, linear in the number of models) and
``_objective`` (the objective at exact permutations).
"""
