"""The runtime adapts to the session's real inputs: int32 attention_mask and position_ids, the
latter really consumed by the graph (GroupQueryAttention's rotary positions). The variant
folder must give the same greedy tokens as the original, and as onnxruntime-genai."""

import json
import shutil

import numpy as np
import onnx
from genai_ref import genai_greedy
from onnx import TensorProto, helper
from runtime_helpers import ROOT, aligner

TINY = ROOT / "models" / "tiny-llama-fp32"


def make_variant(dst):
    dst.mkdir()
    for f in TINY.iterdir():
        if f.name != "model.onnx":
            shutil.copy(f, dst / f.name)
    model = onnx.load(str(TINY / "model.onnx"), load_external_data=False)
    g = model.graph
    # attention_mask arrives as int32 and is widened inside the graph.
    mask = next(i for i in g.input if i.name == "attention_mask")
    mask.type.tensor_type.elem_type = TensorProto.INT32
    for node in g.node:
        node.input[:] = ["attention_mask_i64" if x == "attention_mask" else x for x in node.input]
    g.node.insert(0, helper.make_node("Cast", ["attention_mask"], ["attention_mask_i64"], to=TensorProto.INT64))
    # position_ids (int32, like the mask) feeds GroupQueryAttention's rotary.
    g.input.insert(2, helper.make_tensor_value_info("position_ids", TensorProto.INT32, ["batch_size", "sequence_length"]))
    g.node.insert(0, helper.make_node("Cast", ["position_ids"], ["position_ids_i64"], to=TensorProto.INT64))
    for node in g.node:
        if node.op_type == "GroupQueryAttention":
            node.input.extend([""] * (10 - len(node.input)))
            node.input[9] = "position_ids_i64"
    onnx.save(model, str(dst / "model.onnx"))
    cfg = json.loads((dst / "genai_config.json").read_text())
    cfg["model"]["decoder"]["inputs"]["position_ids"] = "position_ids"
    (dst / "genai_config.json").write_text(json.dumps(cfg))
    return dst


def greedy(folder, ids):
    return aligner("generate", "--model", str(folder), "--prompt-ids", ",".join(map(str, ids)),
                   "--max-new-tokens", "32", "--suppress-eos")["tokens"]


def test_int32_mask_and_position_ids_give_the_same_tokens(tmp_path):
    variant = make_variant(tmp_path / "variant")
    ref = np.load(ROOT / "tests" / "fixtures" / "tiny-llama" / "reference.npz")
    for n in (0, 2):
        ids = ref[f"prompt_{n}"].tolist()
        ours = greedy(variant, ids)
        assert ours == greedy(TINY, ids)
        assert ours == genai_greedy(str(variant), ids, 32)
