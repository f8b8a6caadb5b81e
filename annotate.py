"""Labels every cell of a new time course with a trained model, writing an annotated copy:

  python annotate.py --workdir=runs/annotate --input=query.h5ad --output=annotated.h5ad

The input (an .h5ad, or a folder in GSE175634's GEO layout) needs a time column with the model's time points
(any subset of them) and the model's genes by name; it needs no labels and is never modified. The output is a
copy with obs['cardiac_jax_label'], obs['cardiac_jax_confidence'], obsm['cardiac_jax_probabilities'] and
uns['cardiac_jax'], written completely or not at all.

What the confidence means: the model's probability of the label it gives, calibrated by temperature scaling
on the training run's validation cells (held-out donors): logits are divided by the temperature in the
workdir's calibration.json, fitted to minimise the validation negative log-likelihood, so that among cells
given confidence p about a fraction p should be right (eval.py's reliability.png shows how well that holds on
the test cells). It cannot change which label is given. Cells whose confidence is below --min_confidence are
labelled 'Unassigned'; the default 0.5 is a fixed rule (the label must be more probable than all other
classes together), not a threshold tuned on data.
"""

from absl import flags

from cardiac_jax import cli, inference, preprocess

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir of train.py trained with a per-cell sequence mode "
                    "(configs/annotate.py, or data.sequence_mode=cell).", required=True)
flags.DEFINE_string("input", None, "The time course to label: an .h5ad file or a GSE175634-layout GEO folder.",
                    required=True)
flags.DEFINE_string("output", None, "Where to write the annotated copy (.h5ad); never the input.", required=True)
flags.DEFINE_string("time_key", None, "obs column of the time points; default: the training config's data.time_key.")
flags.DEFINE_string("donor_key", None, "obs column of the donor or sample: anchored context comes from each cell's "
                    "own donor. Default: the training config's data.donor_key if the input has it; '' for none.")
flags.DEFINE_string("gene_key", None, "var column of gene names; default: var_names.")
flags.DEFINE_enum("normalization", "auto", preprocess.NORMALIZATIONS,
                  "What X holds: auto (detected as training does), counts, linear (FPKM/TPM) or log.")
flags.DEFINE_float("min_confidence", 0.5, "Cells whose top probability is below this are labelled 'Unassigned'.")
flags.DEFINE_string("geo_matrix", "counts", "For a GEO folder: 'counts' or 'sctransform'.")


def main():
  inference.annotate_file(
      FLAGS.workdir, FLAGS.input, FLAGS.output, time_key=FLAGS.time_key, donor_key=FLAGS.donor_key,
      gene_key=FLAGS.gene_key, normalization=FLAGS.normalization, min_confidence=FLAGS.min_confidence,
      geo_matrix=FLAGS.geo_matrix)


if __name__ == "__main__":
  cli.run(main)
