"""A multinomial logistic regression in JAX: the linear start of the annotation network.

`fit` minimises the (optionally class-weighted) mean cross-entropy plus an L2 penalty on the weights of
`l2 / (2 n)` (scikit-learn's LogisticRegression with C = 1 / l2, divided by n) with optax's L-BFGS. The network's
linear path reads exactly such a map of the labelled cell's inputs (model.EnhancedCardiacRNN.linear_path), so
starting it from this fit makes the untrained network the logistic regression, and training adds what the
sequence model finds beyond it (`start_params`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

# L-BFGS iterations; the fit stops earlier once the gradient's norm is below TOLERANCE.
ITERATIONS = 500
TOLERANCE = 1e-5


def objective(params, x, labels, weights, l2):
  """Weighted mean cross-entropy of softmax(x @ kernel + bias) plus l2 / (2 n) * ||kernel||^2."""
  logits = x @ params["kernel"] + params["bias"]
  losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)[:, 0]
  return jnp.sum(weights * losses) / jnp.sum(weights) + 0.5 * l2 / x.shape[0] * jnp.sum(params["kernel"] ** 2)


@jax.jit
def _fit(x, labels, weights, l2, init):
  """L-BFGS on `objective` from `init` ({'kernel': [features, classes], 'bias': [classes]}) for x [n, features],
  labels [n] int, weights [n]: at most ITERATIONS steps, fewer once the gradient's norm is below TOLERANCE."""
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(lambda p: objective(p, x, labels, weights, l2))

  def step(carry):
    params, state, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=lambda p: objective(p, x, labels, weights, l2))
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad)

  def running(carry):
    return (optax.tree.get(carry[1], "count") < ITERATIONS) & (carry[2] >= TOLERANCE)

  params, _, _ = jax.lax.while_loop(running, step, (init, solver.init(init), jnp.asarray(jnp.inf)))
  return params


def fit(x, labels, n_classes, class_weights=None, l2=1.0):
  """(kernel [features, classes], bias [classes]) float32 of the logistic regression of labels [n] on x [n, features].

  Args:
    class_weights: [classes] weight of each class in the loss (as the network is trained with), or None.
    l2: the penalty on the kernel, in scikit-learn's units (1 / C).
  """
  x = jnp.asarray(x, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  weights = jnp.ones(len(labels)) if class_weights is None else jnp.asarray(class_weights, jnp.float32)[labels]
  init = {"kernel": jnp.zeros((x.shape[1], n_classes)), "bias": jnp.zeros(n_classes)}
  params = _fit(x, labels, weights, jnp.float32(l2), init)
  return np.asarray(params["kernel"]), np.asarray(params["bias"])


def start_params(params, x, labels, class_weights=None):
  """The network's parameters with its linear path set to the logistic regression of labels [n] on the inputs
  x [n, features] it reads, and its other path's last layer ('classifier') zero: the logits are then the
  logistic regression's exactly, and the rest of the network learns what the linear map misses."""
  kernel, bias = fit(x, labels, params["classifier"]["kernel"].shape[-1], class_weights)
  return dict(params, linear_path={"kernel": kernel, "bias": bias},
              classifier=jax.tree.map(jnp.zeros_like, params["classifier"]))
