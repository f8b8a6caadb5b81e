"""Experiments that measure cardiac_jax against baselines, each a loop of training runs scored through the public
modules (training, workdir, predict, report, metrics): the suite (seeds, ablations, scales, split units), trust
(calibration by donor, unseen types), attribution scores against the simulator's true genes, and the baselines
they compare with (a per-cell logistic regression, CellTypist). `tables` holds their shared summaries."""
