//! Which external initializers a graph reads by row: the tables of Gather nodes (the token
//! embedding and, in an int8 folder, its scales and zero points), and the data, scales and
//! zero points of a GatherBlockQuantized.
//!
//! A run reads a few rows of such a table, one per distinct token, but on a kernel that keeps
//! files in 2 MB folios every read maps its whole folio: after one correction the default
//! model's 31 MB embedding is all resident (see `pages`). Knowing where these tables lie in
//! the data file lets a start make their later reads map single pages.
//!
//! ONNX is protobuf; this reads the few fields it needs (nodes' inputs and op types,
//! initializers' names and external-data entries) without a protobuf dependency. Anything
//! it cannot read yields no tables, which only forgoes the saving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A model file larger than this holds its weights inline, so nothing of it is mapped.
const MAX_GRAPH_BYTES: u64 = 64 << 20;

/// An initializer's bytes in an external data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RowTable {
    pub name: String,
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// The row-read tables of the model file at `model`, with their data files resolved.
pub(super) fn row_tables(model: &Path) -> Vec<RowTable> {
    let small = std::fs::metadata(model).is_ok_and(|m| m.len() <= MAX_GRAPH_BYTES);
    let Some(bytes) = small.then(|| std::fs::read(model).ok()).flatten() else {
        return Vec::new();
    };
    let dir = model.parent().unwrap_or(Path::new("."));
    let mut tables = parse(&bytes).unwrap_or_default();
    tables.retain_mut(|t| {
        let Ok(file) = dir.join(&t.file).canonicalize() else {
            return false;
        };
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        if t.len == 0 {
            t.len = size.saturating_sub(t.offset); // "length" absent: to the end of the file
        }
        t.file = file;
        t.len > 0 && t.offset.checked_add(t.len).is_some_and(|end| end <= size)
    });
    tables
}

/// How a node reads an initializer: as rows of a table, or by some other rule.
fn reads_rows(op_type: &str, input: usize) -> bool {
    match op_type {
        "Gather" => input == 0,
        // data, indices, scales, zero points
        "GatherBlockQuantized" => matches!(input, 0 | 2 | 3),
        _ => false,
    }
}

/// The tables a Gather-family node reads by row, and which no node reads otherwise. A tied
/// embedding's MatMulNBits is allowed: ONNX Runtime's CPU provider prepacks its weights, so
/// runs read the packed copy, not these pages.
fn parse(model: &[u8]) -> Option<Vec<RowTable>> {
    let mut graphs = Vec::new();
    for_each_field(model, |field, value| {
        if let (7, Value::Bytes(graph)) = (field, value) {
            graphs.push(graph);
        }
    })?;
    // Per initializer: (read by row somewhere, read whole somewhere).
    let mut reads: HashMap<&str, (bool, bool)> = HashMap::new();
    let mut external = Vec::new();
    for graph in graphs {
        let mut nodes = Vec::new();
        for_each_field(graph, |field, value| match (field, value) {
            (1, Value::Bytes(node)) => nodes.push(node),
            (5, Value::Bytes(tensor)) => external.extend(external_tensor(tensor)),
            _ => {}
        })?;
        for node in nodes {
            let (op_type, inputs) = node_inputs(node)?;
            if matches!(op_type, "If" | "Loop" | "Scan") {
                return None; // a subgraph may read any initializer: claim none
            }
            for (i, input) in inputs.into_iter().enumerate() {
                let read = reads.entry(input).or_default();
                if reads_rows(op_type, i) {
                    read.0 = true;
                } else if op_type != "MatMulNBits" {
                    read.1 = true;
                }
            }
        }
    }
    external.retain(|t| reads.get(t.name.as_str()) == Some(&(true, false)));
    Some(external)
}

/// A NodeProto's op type and inputs.
fn node_inputs(node: &[u8]) -> Option<(&str, Vec<&str>)> {
    let (mut op_type, mut inputs) = ("", Vec::new());
    for_each_field(node, |field, value| match (field, value) {
        (1, Value::Bytes(input)) => inputs.push(std::str::from_utf8(input).unwrap_or("")),
        (4, Value::Bytes(op)) => op_type = std::str::from_utf8(op).unwrap_or(""),
        _ => {}
    })?;
    Some((op_type, inputs))
}

/// A TensorProto stored in an external file: its name, file, offset and length (0: to the
/// end of the file).
fn external_tensor(tensor: &[u8]) -> Option<RowTable> {
    const EXTERNAL: u64 = 1; // TensorProto.DataLocation.EXTERNAL
    let (mut name, mut location, mut entries) = ("", 0, Vec::new());
    for_each_field(tensor, |field, value| match (field, value) {
        (8, Value::Bytes(n)) => name = std::str::from_utf8(n).unwrap_or(""),
        (13, Value::Bytes(entry)) => entries.push(entry),
        (14, Value::Varint(v)) => location = v,
        _ => {}
    })?;
    if location != EXTERNAL || name.is_empty() {
        return None;
    }
    let mut table = RowTable {
        name: name.to_owned(),
        file: PathBuf::new(),
        offset: 0,
        len: 0,
    };
    for entry in entries {
        let (mut key, mut value) = ("", "");
        for_each_field(entry, |field, v| match (field, v) {
            (1, Value::Bytes(k)) => key = std::str::from_utf8(k).unwrap_or(""),
            (2, Value::Bytes(v)) => value = std::str::from_utf8(v).unwrap_or(""),
            _ => {}
        })?;
        match key {
            "location" => table.file = PathBuf::from(value),
            "offset" => table.offset = value.parse().ok()?,
            "length" => table.len = value.parse().ok()?,
            _ => {}
        }
    }
    (!table.file.as_os_str().is_empty()).then_some(table)
}

/// One protobuf field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Calls `f` with each field of one message; `None` when the bytes are not protobuf.
fn for_each_field<'a>(mut buf: &'a [u8], mut f: impl FnMut(u64, Value<'a>)) -> Option<()> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                buf = buf.get(width..)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Value::Bytes(bytes)
            }
            _ => return None, // groups (long deprecated) or garbage
        };
        f(key >> 3, value);
    }
    Some(())
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
        put_varint((field << 3) | wire, out);
    }

    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes(field: u64, data: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        put_varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn node(op_type: &str, inputs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for input in inputs {
            bytes(1, input.as_bytes(), &mut n);
        }
        bytes(3, b"a node name", &mut n);
        bytes(4, op_type.as_bytes(), &mut n);
        n
    }

    fn tensor(name: &str, external: &[(&str, &str)]) -> Vec<u8> {
        let mut t = Vec::new();
        key(1, 0, &mut t); // dims
        put_varint(49152, &mut t);
        key(2, 0, &mut t); // data_type
        put_varint(3, &mut t);
        bytes(8, name.as_bytes(), &mut t);
        for (k, v) in external {
            let mut entry = Vec::new();
            bytes(1, k.as_bytes(), &mut entry);
            bytes(2, v.as_bytes(), &mut entry);
            bytes(13, &entry, &mut t);
        }
        if !external.is_empty() {
            key(14, 0, &mut t);
            put_varint(1, &mut t);
        }
        t
    }

    fn model(nodes: &[Vec<u8>], tensors: &[Vec<u8>]) -> Vec<u8> {
        let mut g = Vec::new();
        for n in nodes {
            bytes(1, n, &mut g);
        }
        bytes(2, b"graph", &mut g);
        for t in tensors {
            bytes(5, t, &mut g);
        }
        key(3, 5, &mut g); // a fixed32 field to skip (not GraphProto's, but legal wire data)
        g.extend_from_slice(&[0; 4]);
        let mut m = Vec::new();
        key(1, 0, &mut m); // ir_version
        put_varint(10, &mut m);
        bytes(7, &g, &mut m);
        m
    }

    fn at(name: &str, offset: &str, len: &str) -> Vec<u8> {
        let mut entries = vec![("location", "model.onnx.data"), ("offset", offset)];
        if !len.is_empty() {
            entries.push(("length", len));
        }
        tensor(name, &entries)
    }

    #[test]
    fn a_tied_embedding_and_its_block_tables_are_row_tables() {
        let m = model(
            &[
                node("Gather", &["emb.q", "input_ids"]),
                node("Gather", &["emb.scales", "input_ids"]),
                node("MatMulNBits", &["h", "emb.q", "emb.scales", "emb.zp"]),
                node(
                    "GatherBlockQuantized",
                    &["other.q", "input_ids", "other.s", ""],
                ),
                node("MatMul", &["h", "proj"]),
                node("Gather", &["shape", "idx"]),
            ],
            &[
                at("emb.q", "4096", "28311552"),
                at("emb.scales", "28315648", "3538944"),
                at("emb.zp", "31854592", "884736"),
                at("other.q", "0", ""),
                at("other.s", "8192", "64"),
                at("proj", "12288", "4096"),
                at("idx", "16384", "8"), // Gather's indices: read whole
                tensor("shape", &[]),    // inline, so never mapped
            ],
        );
        let names: Vec<(String, u64, u64)> = parse(&m)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.offset, t.len))
            .collect();
        assert_eq!(
            names,
            [
                ("emb.q".to_owned(), 4096, 28311552),
                ("emb.scales".to_owned(), 28315648, 3538944),
                ("other.q".to_owned(), 0, 0),
                ("other.s".to_owned(), 8192, 64),
            ]
        );
    }

    #[test]
    fn a_table_also_read_whole_is_not_a_row_table() {
        let m = model(
            &[
                node("Gather", &["emb", "input_ids"]),
                node("MatMul", &["h", "emb"]), // an untied lm_head reading the same table
            ],
            &[at("emb", "0", "4096")],
        );
        assert_eq!(parse(&m).unwrap(), []);
        let looped = model(
            &[node("Gather", &["emb", "ids"]), node("Loop", &["n", "c"])],
            &[at("emb", "0", "4096")],
        );
        assert_eq!(parse(&looped), None);
    }

    #[test]
    fn bytes_that_are_not_protobuf_give_no_tables() {
        let m = model(
            &[node("Gather", &["emb", "ids"])],
            &[at("emb", "0", "4096")],
        );
        for cut in [1, m.len() / 2, m.len() - 1] {
            assert_eq!(parse(&m[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(&[0x0b]), None); // a group start
        assert_eq!(parse(&[0xff; 11]), None); // a varint past 64 bits
        let bad_offset = model(&[node("Gather", &["emb", "ids"])], &[at("emb", "x", "1")]);
        assert_eq!(parse(&bad_offset).unwrap(), []);
    }

    #[test]
    fn tables_resolve_against_the_data_file_and_must_lie_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx.data"), vec![0u8; 40960]).unwrap();
        let m = model(
            &[
                node("Gather", &["a", "ids"]),
                node("Gather", &["b", "ids"]),
                node("Gather", &["c", "ids"]),
                node("Gather", &["d", "ids"]),
            ],
            &[
                at("a", "4096", "8192"),
                at("b", "8192", ""),
                at("c", "36864", "8192"),
                at("d", "18446744073709551615", "4096"),
            ],
        );
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, m).unwrap();
        let data = dir.path().join("model.onnx.data").canonicalize().unwrap();
        let got: Vec<(String, PathBuf, u64, u64)> = row_tables(&path)
            .into_iter()
            .map(|t| (t.name, t.file, t.offset, t.len))
            .collect();
        // "c" runs past the end of the file, "d" past the end of any.
        assert_eq!(
            got,
            [
                ("a".to_owned(), data.clone(), 4096, 8192),
                ("b".to_owned(), data, 8192, 32768),
            ]
        );
        assert_eq!(row_tables(&dir.path().join("missing.onnx")), []);
    }
}
