"""The torch module that runs a ZeroCode's PyTensor graphs with the op lowering (lower_torch): graph constants
become buffers (so the exporter stores them as initializers), placeholders take the inputs and the posterior
values (sample axis last)."""

from __future__ import annotations

import numpy as np
import torch

from onnxforge.bayes import lower_torch as lt


class TorchGraph(torch.nn.Module):
    def __init__(self, zc):
        super().__init__()
        from pytensor.graph.basic import Constant
        from pytensor.tensor.type_other import NoneTypeT

        try:
            from pytensor.graph.traversal import io_toposort
        except ImportError:  # pytensor < 2.36
            from pytensor.graph.basic import io_toposort
        from pytensor.compile.sharedvalue import SharedVariable

        self.names = list(zc.graphs)
        self.outputs = [zc.graphs[n] for n in self.names]
        self.nodes = list(io_toposort([], self.outputs))
        self.inputs = dict(zc.input_vars)
        self.params = dict(zc.param_vars)
        self.consts: dict = {}  # PyTensor variable → (buffer name | host value, numpy value)
        values: dict = {}  # numpy value of every constant leaf and of every node computed from constants only
        leaves = {i for node in self.nodes for i in node.inputs if i.owner is None}
        leaves |= {o for o in self.outputs if o.owner is None}
        for var in sorted(leaves, key=lambda v: str(v.auto_name)):
            if var in self.inputs.values() or var in self.params.values():
                continue
            if isinstance(var.type, NoneTypeT):
                self.consts[var] = (None, None)
            elif isinstance(var, Constant):
                values[var] = var.data
            elif isinstance(var, SharedVariable):
                values[var] = var.get_value()  # a pm.Data not named in inputs, or a coords length: fixed
            else:
                raise lt.Unsupported(f"free input {var}")
        live = []
        for node in self.nodes:  # constant folding, in numpy by the op itself: shapes and indices stay static
            if node.inputs and all(i in values for i in node.inputs):
                outs = _perform(node, [values[i] for i in node.inputs])
                values.update(zip(node.outputs, outs, strict=True))
            else:
                live.append(node)
        self.nodes = live
        needed = {i for node in live for i in node.inputs} | set(self.outputs)
        for i, (var, value) in enumerate(sorted(values.items(), key=lambda kv: str(kv[0].auto_name))):
            if var not in needed:
                continue
            if isinstance(value, slice):
                self.consts[var] = (value, None)
                continue
            arr = np.asarray(value)
            name = f"c{i}"
            dtype = {torch.float32: np.float32, torch.int64: np.int64, torch.bool: np.bool_}[
                lt.torch_dtype(str(arr.dtype))]
            # np.array, not np.ascontiguousarray: that turns a 0-d constant into shape (1,), one axis too many
            self.register_buffer(name, torch.from_numpy(np.array(arr, dtype=dtype)), persistent=True)
            self.consts[var] = (name, arr)

    def forward(self, inputs: dict, params: dict) -> dict:
        env = {}
        for n, v in self.inputs.items():
            if n in inputs:
                env[v] = lt.Val(inputs[n].to(lt.torch_dtype(v.type.dtype)))
        for n, v in self.params.items():
            if n in params:
                env[v] = lt.Val(params[n], b=True)
        for var, (ref, arr) in self.consts.items():
            if arr is None:
                env[var] = lt.Val(ref, host=True)
            else:
                env[var] = lt.Val(getattr(self, ref), const=arr)
        for node in self.nodes:
            outs = lt.apply(node, [env[i] for i in node.inputs])
            for o, v in zip(node.outputs, outs, strict=False):
                env[o] = v
        # a parameter computed from the data alone (a known per-row sigma, binomial trials from pm.Data) has no
        # sample axis: give it one, as the module expects (rows, samples)
        return {n: env[o].t if env[o].b else env[o].t.unsqueeze(-1) for n, o in zip(self.names, self.outputs,
                                                                                    strict=True)}


def _perform(node, inputs: list) -> list:
    """The op's own numpy implementation on constant inputs."""
    storage = [[None] for _ in node.outputs]
    import inspect

    if len(inspect.signature(node.op.perform).parameters) >= 4:  # ops with a params_type take their params
        node.op.perform(node, inputs, storage, node.op.get_params(node))
    else:
        node.op.perform(node, inputs, storage)
    return [st[0] for st in storage]
