"""The seed's model and training step in PyTorch, for speed comparisons with cardiac_jax (not used by it).

The model is the seed-notes table: 1,386,375 parameters with 200 genes (PyTorch's LSTM has two biases per
gate, Flax's one). It computes what `cardiac_jax.model.EnhancedCardiacRNN` computes: the LSTM reads packed
sequences, so the backward direction starts at each sequence's last valid step; attention ignores padded
keys; pooling averages valid steps. The step is the seed's recipe as `cardiac_jax.training` runs it: AdamW
(weight decay 0.01, eps 1e-8) after global-norm clipping at 1.0, cross-entropy with label smoothing 0.1.

Needs the `bench` extra: pip install -e '.[bench]' (torch 2.13.0, CPU build).
"""

import torch
from torch import nn

SEED_PARAMETERS = 1_386_375


class TorchCardiacRNN(nn.Module):
  """The seed's attention-enhanced BiLSTM; forward(x [batch, steps, genes], lengths [batch]) -> logits."""

  def __init__(self, input_dim=200, hidden_dim=128, num_layers=3, num_heads=8, dropout=0.3, input_dropout=0.15,
               head_dims=(128, 64), num_classes=7):
    super().__init__()
    self.input_proj = nn.Sequential(
        nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(), nn.Dropout(input_dropout))
    self.lstm = nn.LSTM(hidden_dim, hidden_dim, num_layers, batch_first=True, bidirectional=True, dropout=dropout)
    width = 2 * hidden_dim
    self.attention = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
    self.attention_norm = nn.LayerNorm(width)
    head = []
    for dim in head_dims:
      head += [nn.Linear(width, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Dropout(dropout)]
      width = dim
    self.head = nn.Sequential(*head, nn.Linear(width, num_classes))

  def forward(self, x, lengths):
    """Logits [batch, classes] of x [batch, steps, genes] float32 with lengths [batch] int64 (on the CPU)."""
    steps = x.shape[1]
    mask = torch.arange(steps)[None, :] < lengths[:, None]  # [batch, steps]
    h = self.input_proj(x)
    packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
    h, _ = self.lstm(packed)
    h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=steps)  # zeros at padding
    attended, _ = self.attention(h, h, h, key_padding_mask=~mask, need_weights=False)
    h = self.attention_norm(h + attended)
    counts = mask.sum(1, keepdim=True).clamp(min=1).to(h.dtype)
    pooled = (h * mask[..., None]).sum(1) / counts
    return self.head(pooled)


def count_params(model):
  return sum(p.numel() for p in model.parameters())


class TrainStep:
  """One optimisation step of the seed's recipe: __call__(x, lengths, labels) -> loss (a float)."""

  def __init__(self, model, learning_rate=0.002, weight_decay=0.01, eps=1e-8, clip_norm=1.0, label_smoothing=0.1):
    self.model = model
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay, eps=eps)
    self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    self.clip_norm = clip_norm

  def __call__(self, x, lengths, labels):
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss(self.model(x, lengths), labels)
    loss.backward()
    nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    return loss.item()


def seed_model():
  """The seed's model on 200 genes and 7 classes, its parameter count checked against the seed's."""
  model = TorchCardiacRNN()
  n = count_params(model)
  if n != SEED_PARAMETERS:
    raise AssertionError(f"the PyTorch model has {n:,} parameters, the seed's has {SEED_PARAMETERS:,}")
  return model


def load_flax_params(model, params):
  """Copies the parameters of a `cardiac_jax.model.EnhancedCardiacRNN` (its 'params' tree) into `model`, a
  TorchCardiacRNN of the same sizes, so both compute the same function. PyTorch's second LSTM bias (bias_hh)
  is set to zero: Flax's cell has one bias per gate."""
  import numpy as np

  def tensor(a):
    return torch.from_numpy(np.array(a, np.float32))

  def dense(linear, p):
    linear.weight.data = tensor(p["kernel"]).T.contiguous()
    linear.bias.data = tensor(p["bias"])

  def norm(layer_norm, p):
    layer_norm.weight.data, layer_norm.bias.data = tensor(p["scale"]), tensor(p["bias"])

  dense(model.input_proj[0], params["input_proj"])
  norm(model.input_proj[1], params["input_norm"])
  for layer in range(model.lstm.num_layers):
    p = params[f"lstm_{layer}"]
    for direction, suffix in enumerate(("", "_reverse")):
      getattr(model.lstm, f"weight_ih_l{layer}{suffix}").data = tensor(p["input_kernel"][direction]).T.contiguous()
      getattr(model.lstm, f"weight_hh_l{layer}{suffix}").data = tensor(p["recurrent_kernel"][direction]).T.contiguous()
      getattr(model.lstm, f"bias_ih_l{layer}{suffix}").data = tensor(p["bias"][direction])
      getattr(model.lstm, f"bias_hh_l{layer}{suffix}").data.zero_()
  attention, width = params["attention"], model.attention.embed_dim
  model.attention.in_proj_weight.data = torch.cat(
      [tensor(attention[k]["kernel"]).reshape(width, width).T for k in ("query", "key", "value")]).contiguous()
  model.attention.in_proj_bias.data = torch.cat([tensor(attention[k]["bias"]).reshape(width) for k in ("query", "key", "value")])
  model.attention.out_proj.weight.data = tensor(attention["out"]["kernel"]).reshape(width, width).T.contiguous()
  model.attention.out_proj.bias.data = tensor(attention["out"]["bias"])
  norm(model.attention_norm, params["attention_norm"])
  linears = [m for m in model.head if isinstance(m, nn.Linear)]
  norms = [m for m in model.head if isinstance(m, nn.LayerNorm)]
  for i, (linear, layer_norm) in enumerate(zip(linears, norms)):
    dense(linear, params[f"head_{i}"])
    norm(layer_norm, params[f"head_norm_{i}"])
  dense(linears[-1], params["classifier"])
  return model
