"""Incremental ONNX graph construction with weights streamed to one external data file.

Each initializer is appended to `model.onnx.data` the moment it is added, so peak memory is
bounded by the tensors of the layer being converted, not by the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ALIGN = 64
INLINE_LIMIT = 1024  # bytes; tiny constants stay inside model.onnx


class GraphWriter:
    def __init__(self, data_path: Path):
        self.data_path = data_path
        # Held open across many add() calls and closed by finish(): no `with` block fits.
        self._data = open(data_path, "wb")  # noqa: SIM115
        self._offset = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()

    # -- initializers -------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes <= INLINE_LIMIT:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        pad = (-self._offset) % ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        raw = array.tobytes()
        self._data.write(raw)
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(self._offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key = key
            entry.value = value
        self._offset += len(raw)
        self.initializers.append(t)
        return name

    def const_i64(self, name: str, values) -> str:
        if name not in self._names:
            self._names.add(name)
            self.initializers.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    # -- nodes --------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def one(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        return self.node(op, inputs, [f"{name}/output_0"], name, domain, **attrs)[0]

    def add_input(self, name: str, elem_type: int, shape: list) -> None:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def add_output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def save(self, model_path: Path, producer: str, metadata: dict[str, str]) -> None:
        self._data.close()
        graph = helper.make_graph(self.nodes, "aligner", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
            producer_name=producer,
        )
        model.ir_version = 10
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key = key
            entry.value = value
        onnx.save(model, str(model_path))
