"""cardiac-jax annotate --workdir=runs/annotate --input=query.h5ad --output=annotated.h5ad

Labels every cell of a new time course (an .h5ad or a GSE175634-layout GEO folder, with a time column; no labels
needed; never modified) into an annotated copy. The label is the most probable class after the run's calibration,
or 'Unassigned' when the cell's score is below a threshold chosen on the run's validation cells (README,
"Annotate your own time course").
"""

from absl import flags

from cardiac_jax import annotation, conformal, preprocess, unassigned

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run trained with a per-cell sequence mode (--config=annotate).",
                    required=True)
flags.DEFINE_string("input", None, "The time course to label: an .h5ad file or a GSE175634-layout GEO folder.",
                    required=True)
flags.DEFINE_string("output", None, "Where to write the annotated copy (.h5ad); never the input.", required=True)
flags.DEFINE_string("time_key", None, "obs column of the time points; default: the run's data.time_key.")
flags.DEFINE_string("donor_key", None, "obs column of the donor: an anchored run takes context from each cell's "
                    "own donor. Default: the run's data.donor_key if the input has it; '' for none.")
flags.DEFINE_string("gene_key", None, "var column of gene names; default: var_names.")
flags.DEFINE_enum("normalization", "auto", preprocess.NORMALIZATIONS,
                  "What X holds: auto (detected as training does), counts, linear (FPKM/TPM) or log.")
flags.DEFINE_enum("unassigned_score", unassigned.DEFAULT_SCORE, unassigned.RULE_SCORES,
                  "The score that decides 'Unassigned', written to obs['cardiac_jax_unassigned_score'] (lower = less "
                  "like any training type): energy (logsumexp of the calibrated logits; it separated types left out "
                  "of training best), probability (top probability), novelty (distance to the training cells over "
                  "the whole transcriptome's 2,000 most variable genes), combined (the lower of the cell's energy "
                  "and novelty quantiles among its most probable type's validation cells, 0-1), or none.")
flags.DEFINE_float("keep_known", unassigned.KEEP_KNOWN, "Without --threshold: the threshold keeps this share of "
                   "the run's validation cells (known types, held-out donors) assigned.")
flags.DEFINE_float("threshold", None, "Cells whose score is below this are 'Unassigned', one threshold for all "
                   "(overrides --keep_known; for combined, 0.01 leaves out cells less like the training types than "
                   "99% of their type's validation cells on either view). uns['cardiac_jax']['unassigned'] holds "
                   "the thresholds used and how they were chosen.")
flags.DEFINE_bool("per_class", True, "Without --threshold: one threshold per class, each keeping --keep_known of "
                  "that class's validation cells assigned (a rare class is not left out whole); "
                  "--noper_class: one threshold for all cells.")
flags.DEFINE_float("alpha", conformal.ALPHA, "Label sets (obsm['cardiac_jax_label_sets'], their size in "
                   "obs['cardiac_jax_label_set_size']): each cell gets the smallest set of types that holds its true "
                   "type with probability 1 - alpha, for every type alike, calibrated on the run's validation "
                   "donors; an empty set is a cell no known type explains as well as its validation cells.")
flags.DEFINE_string("geo_matrix", "counts", "For a GEO folder: 'counts' or 'sctransform'.")


def main():
  annotation.annotate_file(
      FLAGS.workdir, FLAGS.input, FLAGS.output, time_key=FLAGS.time_key, donor_key=FLAGS.donor_key,
      gene_key=FLAGS.gene_key, normalization=FLAGS.normalization, unassigned_score=FLAGS.unassigned_score,
      threshold=FLAGS.threshold, keep_known=FLAGS.keep_known, per_class=None if FLAGS.per_class else False,
      alpha=FLAGS.alpha, geo_matrix=FLAGS.geo_matrix)
