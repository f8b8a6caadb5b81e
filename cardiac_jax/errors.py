"""The one error type for bad input: it names the file and says what is wrong with it."""


class DataError(ValueError):
  """Bad input data: `path` is the file (or folder) at fault, `problem` what is wrong."""

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


class ConfigError(ValueError):
  """A config or workdir that cannot work (an unknown option, a workdir of another run, no checkpoint)."""
