"""The one way a figure is saved: laid out, written at one resolution, and closed (pyplot keeps open ones)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

DPI = 120


def save(fig, path):
  """Writes `fig` to `path` (its suffix picks the format) and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
