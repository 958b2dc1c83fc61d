"""Make a padded batch give every clip the result it gets alone, in the two backbone parts that read padding.

`model(batch, attention_mask=mask)` zero-pads short clips. Two parts of the supported backbones let those zeros
change a clip's own frames, so its score would depend on the other clips of its batch:

- **Group norm in the convolutional feature encoder** (wav2vec2-base, HuBERT-base, WavLM-base:
  `feat_extract_norm="group"`): `nn.GroupNorm` normalises each channel over *all* time steps, padding included. Here
  each clip is normalised over its own conv frames only (the convolutions stay batched). The frames a clip keeps
  (the attention mask's) depend only on its own samples, so nothing else of the encoder leaks.
- **data2vec-audio's positional convolutions**: a stack of convolutions over the frames. The encoder zeroes the
  padded frames before the first one, but each layer's bias and layer norm make them non-zero again, and the next
  layer reads them across the clip's end. Here the padded frames are zeroed before every layer, which is what the
  convolutions' own zero padding gives the clip alone.

Layer-norm feature encoders (XLS-R, data2vec-audio's) normalise each frame on its own and need nothing. The patched
modules read the clip lengths from the forward's own `RoutingState` (set by the model, carried into activation
checkpointing's recompute), so the model stays shared across threads; without padding (no mask, or no clip shorter
than the batch) they run the original code unchanged, same speed and same numbers. As with WavLM's attention
(`attention_patches.py`), each module's class is swapped for a subclass: weights and state-dict keys stay as they are.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .routing_state import active_routing_state


def _conv_output_lengths(lengths: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Output frames of `conv` for inputs of `lengths` samples (PyTorch's formula, without rounding up)."""
    (kernel,), (stride,), (padding,), (dilation,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return torch.div(lengths + 2 * padding - dilation * (kernel - 1) - 1, stride, rounding_mode="floor") + 1


def group_norm_per_clip(hidden: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """`norm` applied to each clip's first `lengths` frames on their own, padded frames set to 0.

    hidden: (B, C, T); lengths: (B,) real frames per clip (right padding). One native group norm per clip on a view
    of its frames: the clip's frames get exactly what they get when it runs alone. The zeros in the padded frames
    only reach frames that the attention mask drops.
    """
    frames = hidden.shape[-1]
    return torch.cat(
        [
            F.pad(norm(hidden[row : row + 1, :, :length]), (0, frames - length))
            for row, length in enumerate(lengths.tolist())
        ]
    )  # (B, C, T)


def _input_lengths(module: nn.Module) -> torch.Tensor | None:
    """Samples (or frames) per clip at this conv layer's input during a padded forward; None otherwise."""
    state = active_routing_state()
    if state is None or state.sample_lengths is None:
        return None
    lengths = state.sample_lengths
    for conv in module._molex_preceding_convs:
        lengths = _conv_output_lengths(lengths, conv)
    return lengths


def _group_norm_conv_layer_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    lengths = _input_lengths(self)
    if lengths is None:
        return self._molex_original_class.forward(self, hidden_states)
    hidden_states = self.conv(hidden_states)  # (B, C, T')
    hidden_states = group_norm_per_clip(hidden_states, _conv_output_lengths(lengths, self.conv), self.layer_norm)
    return self.activation(hidden_states)


def _positional_conv_stack_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    state = active_routing_state()
    if state is None or state.sample_lengths is None or state.frame_mask is None:
        return self._molex_original_class.forward(self, hidden_states)
    keep = state.frame_mask[:, None, :].to(hidden_states.dtype)  # (B, 1, T)
    hidden_states = hidden_states.transpose(1, 2)  # (B, D, T)
    for layer in self.layers:
        hidden_states = layer(hidden_states * keep)
    return hidden_states.transpose(1, 2)


_PATCHED_CLASSES: dict[type, type] = {}


def _swap_class(module: nn.Module, forward, doc: str) -> None:
    cls = type(module)
    if cls not in _PATCHED_CLASSES:
        members = {"forward": forward, "__doc__": doc, "_molex_original_class": cls}
        _PATCHED_CLASSES[cls] = type(f"MoLExPaddingAware{cls.__name__}", (cls,), members)
    module.__class__ = _PATCHED_CLASSES[cls]


def make_padding_invariant(backbone: nn.Module) -> int:
    """Patch `backbone` in place (group-norm conv layers, data2vec-audio's positional convolutions); returns how
    many of its modules are padding-aware. Backbones without these parts are left as they are; a second call
    changes nothing."""
    already = set(_PATCHED_CLASSES.values())
    conv_layers = getattr(getattr(backbone, "feature_extractor", None), "conv_layers", None) or []
    for index, layer in enumerate(conv_layers):
        if type(layer) not in already and isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm):
            layer._molex_preceding_convs = [previous.conv for previous in conv_layers[:index]]
            _swap_class(layer, _group_norm_conv_layer_forward, "Group-norm conv layer blind to padding.")
    for module in backbone.modules():
        if type(module).__name__ == "Data2VecAudioPositionalConvEmbedding":
            _swap_class(module, _positional_conv_stack_forward, "Positional convolutions blind to padded frames.")
    return sum(type(module) in _PATCHED_CLASSES.values() for module in backbone.modules())
