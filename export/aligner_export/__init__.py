"""aligner_export: turn Llama-family checkpoints into aligner / onnxruntime-genai model folders.

No torch: weights are read with numpy (GGUF through the `gguf` package), the graph is written
with `onnx.helper`, and int8 packing is done here so that each layer is written to the external
data file as soon as it is built.
"""

__version__ = "0.1.0"
