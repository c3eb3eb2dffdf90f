//! Rewriting a model file so that its main graph's initializers are external
//! data, each in a file named after the tensor: the graph without its weights,
//! for a client that fetches (or already has) the weights separately.
//!
//! The rewrite works on the protobuf wire format, not on decoded messages, so
//! every field of the model — including ones our schema subset does not
//! declare (functions, training info, future fields) — is kept byte for byte.
//! Only `ModelProto.graph` → `GraphProto.initializer` entries change: their
//! data fields are dropped and `external_data` + `data_location` added.

use std::collections::HashSet;
use std::fmt::Write as _;

use bytes::Bytes;
use prost::Message;

use super::proto::{GraphProto, ModelProto};

/// Field numbers we touch.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_NAME: u64 = 8;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const TENSOR_RAW_DATA: u64 = 9;
/// float_data, int32_data, int64_data, raw_data, double_data, uint64_data,
/// external_data, data_location: replaced by the new external reference.
const TENSOR_DATA_FIELDS: [u64; 8] = [4, 5, 7, 9, 10, 11, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION];
const STRING: u64 = 8;

/// One field as it lies in a message.
struct Field<'a> {
    number: u64,
    wire: u8,
    /// The whole field, tag included.
    raw: &'a [u8],
    /// A length-delimited field's payload, or a varint's value bytes.
    payload: &'a [u8],
    varint: u64,
}

/// Why a model could not be rewritten.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum RewriteError {
    #[error("the model is not valid protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model is not valid protobuf: {0}")]
    Malformed(&'static str),
    #[error("tensor '{0}' is not among the model's tensors")]
    UnknownTensor(String),
}

/// The fields of a message, in order, as they lie (prost's varint codec;
/// the walk itself is ours because prost decodes into types, and the rewrite
/// must keep every field it does not know byte for byte).
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, RewriteError> {
    use prost::encoding::decode_varint;
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let start = buf.len() - rest.len();
        let tag = decode_varint(&mut rest)?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        let (payload, value) = match wire {
            0 => {
                let before = rest;
                let v = decode_varint(&mut rest)?;
                (&before[..before.len() - rest.len()], v)
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let p = rest.get(..n).ok_or(RewriteError::Malformed("truncated fixed-size field"))?;
                rest = &rest[n..];
                (p, 0)
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut rest)?)
                    .map_err(|_| RewriteError::Malformed("field length overflows"))?;
                let p = rest.get(..len).ok_or(RewriteError::Malformed("truncated field"))?;
                rest = &rest[len..];
                (p, 0)
            }
            _ => return Err(RewriteError::Malformed("unsupported wire type (groups are not used by ONNX)")),
        };
        let end = buf.len() - rest.len();
        out.push(Field { number, wire, raw: &buf[start..end], payload, varint: value });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, out);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn string_entry(key: &str, value: &str) -> Vec<u8> {
    let mut e = Vec::new();
    put_bytes(&mut e, 1, key.as_bytes());
    put_bytes(&mut e, 2, value.as_bytes());
    e
}

/// Initializers smaller than this stay inline in `/graph` (the default of
/// onnx's `external_data_helper`): scalars, scales, zero points and shape
/// vectors cost less inline than as files of their own.
pub const INLINE_BELOW: u64 = 1024;

/// Inputs whose *values* ONNX shape inference reads while a runtime loads the
/// graph (`getInputData`/`ParseData` in onnx/defs, every opset), by operator
/// of the default domain. ONNX Runtime runs that inference on the graph it is
/// given and cannot read external data there ("Cannot parse data from
/// external tensors"), so an initializer used at one of these positions, at
/// any depth of subgraphs, stays inline whatever its size.
const SHAPE_INPUTS: &[(&str, &[usize])] = &[
    ("Reshape", &[1]),
    ("Expand", &[1]),
    ("Tile", &[1]),
    ("ConstantOfShape", &[0]),
    ("Slice", &[1, 2, 3, 4]),
    ("Split", &[1]),
    ("SplitToSequence", &[1]),
    ("Squeeze", &[1]),
    ("Unsqueeze", &[1]),
    ("Pad", &[1, 2, 3]),
    ("Resize", &[1, 2, 3]),
    ("Upsample", &[1]),
    ("TopK", &[1]),
    ("Range", &[0, 1, 2]),
    ("OneHot", &[1]),
    ("CenterCropPad", &[1]),
    ("Col2Im", &[1, 2]),
    ("DFT", &[1, 2]),
    ("STFT", &[1, 3]),
    ("MelWeightMatrix", &[0, 1, 2, 3, 4]),
    ("HannWindow", &[0]),
    ("HammingWindow", &[0]),
    ("BlackmanWindow", &[0]),
    ("ReduceL1", &[1]),
    ("ReduceL2", &[1]),
    ("ReduceLogSum", &[1]),
    ("ReduceLogSumExp", &[1]),
    ("ReduceMax", &[1]),
    ("ReduceMean", &[1]),
    ("ReduceMin", &[1]),
    ("ReduceProd", &[1]),
    ("ReduceSum", &[1]),
    ("ReduceSumSquare", &[1]),
    // A Loop hands its inputs' values to the body's inference.
    ("Loop", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
];

/// Names of the tensors whose values shape inference reads (see
/// [`SHAPE_INPUTS`]), in the graph and all its subgraphs.
pub fn read_by_shape_inference(graph: &GraphProto) -> HashSet<String> {
    let mut out = HashSet::new();
    walk(graph, &mut out);
    out
}

fn walk(graph: &GraphProto, out: &mut HashSet<String>) {
    for node in &graph.node {
        let default_domain = matches!(node.domain(), "" | "ai.onnx");
        let positions = SHAPE_INPUTS.iter().find(|(op, _)| default_domain && *op == node.op_type());
        if let Some((op, positions)) = positions {
            for (i, input) in node.input.iter().enumerate() {
                if positions.contains(&i) || *op == "Loop" {
                    out.insert(input.clone());
                }
            }
        }
        for attr in &node.attribute {
            for g in attr.g.iter().chain(&attr.graphs) {
                walk(g, out);
            }
        }
    }
}

/// The model with its tensors' data replaced by external references at
/// `locate(name)`: initializers of the main graph and of every subgraph, and
/// `Constant` nodes' `value`s, named as [`super::OnnxModel`] names them
/// (`NODE/ATTR/NAME` inside subgraphs). Kept inline: tensors smaller than
/// [`INLINE_BELOW`], tensors shape inference reads, STRING tensors (which
/// cannot be external) and sparse ones. `data_of` gives a tensor's bytes as
/// served; an inline tensor whose source was itself external data gets them
/// as `raw_data`.
pub fn externalize(
    model: &Bytes,
    locate: impl Fn(&str) -> String,
    data_of: impl Fn(&str) -> Option<Bytes>,
) -> Result<Vec<u8>, RewriteError> {
    rewrite(model, &locate, &data_of, None).map(|(graph, _)| graph)
}

/// The model as ONNX Runtime gets it from weightcast: the main graph's
/// initializers and `Constant` values that [`externalize`] would make
/// external point at `placeholder` instead, and their names are returned:
/// the session is handed those tensors' bytes in place (`AddInitializer`),
/// so it never parses or copies them. Subgraph tensors stay inline (their
/// names are only unique within their subgraph), as do the tensors
/// [`externalize`] keeps inline; inline tensors whose source was external
/// data get their bytes as `raw_data`.
/// `share(name)` says whether the session can take a tensor in place (else
/// it stays inline).
pub fn for_session(
    model: &Bytes,
    placeholder: &str,
    data_of: impl Fn(&str) -> Option<Bytes>,
    share: impl Fn(&str) -> bool,
) -> Result<(Vec<u8>, Vec<String>), RewriteError> {
    rewrite(model, &|_: &str| placeholder.to_string(), &data_of, Some(&share))
}

/// The model with every tensor's data inline (`raw_data`): one file that
/// needs nothing beside it (a client whose cache links files from elsewhere
/// — Hugging Face's `blobs/` — cannot give ONNX Runtime external data in the
/// model's folder). `data_of` as for [`externalize`].
pub fn inline(model: &Bytes, data_of: impl Fn(&str) -> Option<Bytes>) -> Result<Vec<u8>, RewriteError> {
    rewrite(model, &|_: &str| String::new(), &data_of, Some(&|_: &str| false)).map(|(graph, _)| graph)
}

fn rewrite(
    model: &Bytes,
    locate: &dyn Fn(&str) -> String,
    data_of: &dyn Fn(&str) -> Option<Bytes>,
    share: Option<&dyn Fn(&str) -> bool>,
) -> Result<(Vec<u8>, Vec<String>), RewriteError> {
    let decoded = ModelProto::decode(model.clone())?;
    let rewrite = Rewrite {
        shape_read: decoded.graph.as_ref().map(read_by_shape_inference).unwrap_or_default(),
        locate,
        data_of,
        share,
        external: std::cell::RefCell::new(Vec::new()),
    };
    let mut out = Vec::with_capacity(model.len().min(1 << 20));
    for f in fields(model)? {
        if f.number == MODEL_GRAPH && f.wire == 2 {
            put_bytes(&mut out, MODEL_GRAPH, &rewrite.graph(f.payload, "")?);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok((out, rewrite.external.into_inner()))
}

/// Field numbers of `GraphProto`, `NodeProto` and `AttributeProto`.
const GRAPH_NODE: u64 = 1;
const NODE_OUTPUT: u64 = 2;
const NODE_NAME: u64 = 3;
const NODE_OP_TYPE: u64 = 4;
const NODE_ATTRIBUTE: u64 = 5;
const NODE_DOMAIN: u64 = 7;
const ATTR_NAME: u64 = 1;
const ATTR_T: u64 = 5;
const ATTR_G: u64 = 6;
const ATTR_GRAPHS: u64 = 11;

struct Rewrite<'a> {
    shape_read: HashSet<String>,
    locate: &'a dyn Fn(&str) -> String,
    data_of: &'a dyn Fn(&str) -> Option<Bytes>,
    /// For a session ([`for_session`]): which main-graph tensors may be
    /// external; subgraph tensors stay inline.
    share: Option<&'a dyn Fn(&str) -> bool>,
    /// Served names of the tensors made external, in order.
    external: std::cell::RefCell<Vec<String>>,
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

impl Rewrite<'_> {
    /// A graph with its initializers and nodes rewritten; `scope` prefixes
    /// the names of its tensors.
    fn graph(&self, graph: &[u8], scope: &str) -> Result<Vec<u8>, RewriteError> {
        let mut out = Vec::with_capacity(graph.len().min(1 << 20));
        let mut node_index = 0;
        for f in fields(graph)? {
            match (f.number, f.wire) {
                (GRAPH_INITIALIZER, 2) => {
                    let raw_name = last_string(f.payload, TENSOR_NAME)?;
                    let served = format!("{scope}{raw_name}");
                    put_bytes(&mut out, GRAPH_INITIALIZER, &self.tensor(f.payload, &served, &raw_name)?);
                }
                (GRAPH_NODE, 2) => {
                    put_bytes(&mut out, GRAPH_NODE, &self.node(f.payload, scope, node_index)?);
                    node_index += 1;
                }
                _ => out.extend_from_slice(f.raw),
            }
        }
        Ok(out)
    }

    /// A node: a Constant's `value` and the subgraphs of its attributes
    /// rewritten, the rest kept. Nodes with neither are copied as they are.
    fn node(&self, node: &[u8], scope: &str, index: usize) -> Result<Vec<u8>, RewriteError> {
        let fs = fields(node)?;
        let string = |n: u64| fs.iter().rfind(|f| f.number == n && f.wire == 2).map(|f| text(f.payload));
        let op = string(NODE_OP_TYPE).unwrap_or_default();
        let constant = op == "Constant" && matches!(string(NODE_DOMAIN).as_deref(), None | Some("" | "ai.onnx"));
        let output = fs.iter().find(|f| f.number == NODE_OUTPUT && f.wire == 2).map(|f| text(f.payload));
        let label = string(NODE_NAME).filter(|n| !n.is_empty()).unwrap_or_else(|| format!("{op}{index}"));
        let mut out = Vec::with_capacity(node.len());
        for f in &fs {
            if f.number != NODE_ATTRIBUTE || f.wire != 2 {
                out.extend_from_slice(f.raw);
                continue;
            }
            let mut attr = Vec::with_capacity(f.payload.len());
            let afs = fields(f.payload)?;
            let name = afs.iter().rfind(|a| a.number == ATTR_NAME && a.wire == 2).map(|a| text(a.payload));
            let name = name.unwrap_or_default();
            let mut graphs = 0;
            for a in &afs {
                match (a.number, a.wire) {
                    (ATTR_T, 2) if constant && name == "value" => {
                        let output = output.clone().unwrap_or_default();
                        let tensor = self.tensor(a.payload, &format!("{scope}{output}"), &output)?;
                        put_bytes(&mut attr, ATTR_T, &tensor);
                    }
                    (ATTR_G, 2) => {
                        put_bytes(&mut attr, ATTR_G, &self.graph(a.payload, &format!("{scope}{label}/{name}/"))?)
                    }
                    (ATTR_GRAPHS, 2) => {
                        let g = self.graph(a.payload, &format!("{scope}{label}/{name}.{graphs}/"))?;
                        put_bytes(&mut attr, ATTR_GRAPHS, &g);
                        graphs += 1;
                    }
                    _ => attr.extend_from_slice(a.raw),
                }
            }
            put_bytes(&mut out, NODE_ATTRIBUTE, &attr);
        }
        Ok(out)
    }

    /// A tensor served as `served`, named `raw_name` in its graph.
    fn tensor(&self, t: &[u8], served: &str, raw_name: &str) -> Result<Vec<u8>, RewriteError> {
        let fs = fields(t)?;
        let data_type = fs.iter().rfind(|f| f.number == TENSOR_DATA_TYPE && f.wire == 0).map_or(0, |f| f.varint);
        if data_type == STRING {
            return Ok(t.to_vec());
        }
        let data = (self.data_of)(served).ok_or_else(|| RewriteError::UnknownTensor(served.to_string()))?;
        let external = fs.iter().any(|f| f.number == TENSOR_DATA_LOCATION && f.wire == 0 && f.varint == 1);
        let in_subgraph = served.len() != raw_name.len();
        let keep_inline = (data.len() as u64) < INLINE_BELOW
            || self.shape_read.contains(raw_name)
            || self.share.is_some_and(|share| in_subgraph || !share(served));
        if keep_inline && !external {
            return Ok(t.to_vec());
        }
        let mut out = Vec::with_capacity(t.len().min(4096) + if keep_inline { data.len() } else { 0 });
        for f in &fs {
            if !TENSOR_DATA_FIELDS.contains(&f.number) {
                out.extend_from_slice(f.raw);
            }
        }
        if keep_inline {
            put_bytes(&mut out, TENSOR_RAW_DATA, &data);
            return Ok(out);
        }
        let mut len = String::new();
        let _ = write!(len, "{}", data.len());
        put_bytes(&mut out, TENSOR_EXTERNAL_DATA, &string_entry("location", &(self.locate)(served)));
        put_bytes(&mut out, TENSOR_EXTERNAL_DATA, &string_entry("length", &len));
        put_varint(&mut out, TENSOR_DATA_LOCATION << 3);
        put_varint(&mut out, 1); // EXTERNAL
        self.external.borrow_mut().push(served.to_string());
        Ok(out)
    }
}

/// The last value of a string field (protobuf's rule for repeated scalars).
fn last_string(message: &[u8], number: u64) -> Result<String, RewriteError> {
    Ok(fields(message)?
        .iter()
        .rfind(|f| f.number == number && f.wire == 2)
        .map(|f| text(f.payload))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{
        attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, NodeProto, TensorProto,
    };
    use crate::onnx::{OnnxModel, TensorData};

    fn data_of(model: &OnnxModel) -> impl Fn(&str) -> Option<Bytes> + '_ {
        |name| {
            model.tensors.iter().find(|t| t.name == name).map(|t| match &t.data {
                TensorData::Bytes(b) => b.clone(),
                TensorData::Strings(_) => Bytes::new(),
            })
        }
    }

    #[test]
    fn large_initializers_become_external_small_ones_stay_and_the_rest_is_kept() {
        let bytes = Bytes::from(crate::demo::model_bytes());
        let read = OnnxModel::from_bytes("demo.onnx".as_ref(), bytes.clone(), ".".as_ref()).unwrap();
        let out = externalize(&bytes, |n| format!("{n}.bin"), data_of(&read)).unwrap();
        let before = ModelProto::decode(bytes.clone()).unwrap();
        let after = ModelProto::decode(out.as_slice()).unwrap();
        let (g0, g1) = (before.graph.unwrap(), after.graph.unwrap());
        assert_eq!(g0.node, g1.node, "nodes untouched (the Constant keeps its value)");
        assert_eq!(before.opset_import, after.opset_import);
        assert_eq!(before.metadata_props, after.metadata_props);
        let (mut external, mut inline) = (0, 0);
        for (a, b) in g0.initializer.iter().zip(&g1.initializer) {
            assert_eq!((a.name(), &a.dims, a.data_type()), (b.name(), &b.dims, b.data_type()));
            let len = data_of(&read)(a.name()).unwrap().len() as u64;
            if a.data_type() == 8 || len < INLINE_BELOW {
                assert_eq!(a, b, "STRING and small tensors stay inline, as they were");
                inline += 1;
                continue;
            }
            assert!(b.raw_data.is_none() && b.int64_data.is_empty());
            assert_eq!(b.data_location(), DataLocation::External);
            assert_eq!(b.external_data[0].value(), format!("{}.bin", a.name()));
            external += 1;
        }
        assert!(external > 0 && inline > 0, "{external} external, {inline} inline");
        assert!(out.len() < 20_000, "weights are gone: {} bytes", out.len());
    }

    fn int64s(name: &str, n: usize) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            data_type: Some(7),
            dims: vec![n as i64],
            raw_data: Some((0..n as i64).flat_map(i64::to_le_bytes).collect::<Vec<u8>>().into()),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![format!("{op}_out")],
            ..Default::default()
        }
    }

    #[test]
    fn tensors_shape_inference_reads_stay_inline_at_any_size_and_depth() {
        // A 2,400-byte split vector read by a Split inside an If branch, a
        // large Reshape target, and a large weight that goes external.
        let branch = GraphProto { node: vec![node("Split", &["x", "split"])], ..Default::default() };
        let mut iff = node("If", &["cond"]);
        iff.attribute.push(AttributeProto {
            name: Some("then_branch".into()),
            r#type: Some(AttributeType::Graph as i32),
            g: Some(branch),
            ..Default::default()
        });
        let model = ModelProto {
            graph: Some(GraphProto {
                node: vec![iff, node("Reshape", &["x", "shape"]), node("MatMul", &["x", "weight"])],
                initializer: vec![int64s("split", 300), int64s("shape", 200), int64s("weight", 300)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = Bytes::from(model.encode_to_vec());
        let read = OnnxModel::from_bytes("m.onnx".as_ref(), bytes.clone(), ".".as_ref()).unwrap();
        let out =
            ModelProto::decode(externalize(&bytes, |n| n.to_string(), data_of(&read)).unwrap().as_slice()).unwrap();
        let location = |name: &str| {
            let t = out.graph.as_ref().unwrap().initializer.iter().find(|t| t.name() == name).unwrap().clone();
            (t.data_location(), t.raw_data.map(|b| b.len()))
        };
        assert_eq!(location("split"), (DataLocation::Default, Some(2400)));
        assert_eq!(location("shape"), (DataLocation::Default, Some(1600)));
        assert_eq!(location("weight"), (DataLocation::External, None));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(externalize(&Bytes::from_static(&[0x3a, 0xff]), |n| n.into(), |_| Some(Bytes::new())).is_err());
    }
}
