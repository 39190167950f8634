"""The paper's method (Jo et al., *TTD*, ECCV 2024), one module per step.

Read in this order:

* :mod:`.tags` — step 1, **which words of the caption are depicted**: the candidate tags (every
  word of the caption), their scores against the image — ``s_image`` (Eq. 1), ``s_pixel`` (Eq. 2, the
  paper's pixel-tag scoring), ``s_text`` (Eq. 7) — and the selection ``s(t_k) ≥ τ``, with every
  setting in one frozen :class:`~.tags.TagSelection`; :class:`~.tags.TagSelector` runs it on a model.
* :mod:`.distill` — step 2, **what the caption's heatmap should look like**: the per-tag targets
  ``Ĥ_k`` (min-max normalised heatmaps of the selected tags), their union ``U(p) = max_k Ĥ_k(p)``
  (the composite mask), ``L_distill`` (Eq. 4) and ``L_tag`` (Eq. 5), as pure functions.
* :mod:`.objectives` — **one training step**: :class:`~.objectives.TTDObjective` selects online
  (or with the frozen model) and returns ``L = L_distill + λ·L_tag``; beside it the two CLIP
  pretraining objectives the same trainer runs, and their construction from a training config.

Everything here talks to a model only through the dense-model contract of :mod:`ttd.models.dense`
(``encode_image``, ``encode_tokens``, ``similarity``, ``heatmap``), so any dense variant works.
"""
