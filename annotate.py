"""Labels every cell of a new time course with a trained model, writing an annotated copy:

  python annotate.py --workdir=runs/annotate --input=query.h5ad --output=annotated.h5ad

The input (an .h5ad, or a folder in GSE175634's GEO layout) needs a time column with the model's time points
(any subset of them) and the model's genes by name; it needs no labels and is never modified. The output is a
copy with obs['cardiac_jax_label'], obs['cardiac_jax_confidence'], obsm['cardiac_jax_probabilities'] and
uns['cardiac_jax'], written completely or not at all.

What the confidence means: the model's probability of the label it gives, calibrated on the training run's
validation cells (held-out donors) so that among cells given confidence p about a fraction p should be right
(eval.py's reliability.png shows how well that holds on the test cells; the README's "How far to trust a
label" measures it on held-out donors). The workdir's calibration.json holds an affine map of the logits,
logits * scale + bias, fitted to minimise the validation negative log-likelihood: temperature scaling (one
scale 1/T for every class, no bias) or vector scaling (a scale and a bias per class), whichever calibration.json
chose: vector scaling only where, fitted on one half of the validation cells and scored on the other (both
ways), its likelihood beat the temperature's by more than 2 standard errors. The label is the most probable
class after calibration: temperature scaling never changes it, vector scaling can (it moves a class's
probabilities up or down for every cell).

When a cell is 'Unassigned': when its --unassigned_score (of the calibrated logits; default the energy,
their logsumexp, which told cells of types left out of training from known ones better than the top
probability in the README's measurements) is below a threshold. By
default the threshold is chosen on the training run's validation cells (held-out donors, all of types the
model knows; their scores under the same calibration) so that a share --keep_known (0.95) of them stay
assigned: about 5% of cells of known types are expected to be Unassigned,
and cells unlike any training type more often (how much more is measured per left-out type in the README).
--threshold sets it by hand instead (e.g. --unassigned_score=probability --threshold=0.5: the label must be
more probable than all other classes together); --unassigned_score=none labels every cell.
"""

from absl import flags

from cardiac_jax import calibrate, cli, inference, preprocess

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
flags.DEFINE_enum("unassigned_score", calibrate.DEFAULT_SCORE, inference.UNASSIGNED_SCORES,
                  "The score that decides 'Unassigned', of the calibrated logits (temperature or vector scaling, "
                  "as calibration.json chose; vector scaling can change the label): energy (logsumexp; the "
                  "default, it separated cells of unseen types better in the README's measurements), probability "
                  "(top probability) or none (every cell labelled).")
flags.DEFINE_float("keep_known", calibrate.KEEP_KNOWN, "Without --threshold: the threshold keeps this share of "
                   "the run's validation cells (known types, held-out donors) assigned.")
flags.DEFINE_float("threshold", None, "Cells whose score is below this are 'Unassigned' (overrides --keep_known).")
flags.DEFINE_string("geo_matrix", "counts", "For a GEO folder: 'counts' or 'sctransform'.")


def main():
  inference.annotate_file(
      FLAGS.workdir, FLAGS.input, FLAGS.output, time_key=FLAGS.time_key, donor_key=FLAGS.donor_key,
      gene_key=FLAGS.gene_key, normalization=FLAGS.normalization, unassigned_score=FLAGS.unassigned_score,
      threshold=FLAGS.threshold, keep_known=FLAGS.keep_known,
      geo_matrix=FLAGS.geo_matrix)


if __name__ == "__main__":
  cli.run(main)
