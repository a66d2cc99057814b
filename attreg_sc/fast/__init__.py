"""Speed machinery of the model, behind :mod:`attreg.fast_paths`: the encoder split after
its first product (:mod:`attreg_sc.fast.encoder_prefix`) and its closed-form input
gradient (:mod:`attreg_sc.fast.closed_form_gradient`). Same values as the reference math
(tested both ways)."""
