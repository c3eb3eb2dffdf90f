//! The built-in demo model, generated on the fly so no binary is committed:
//! a small MLP (`y = relu(relu(x·W1+b1)·W2+b2)·W3+b3, scaled`) of about 3 MB,
//! plus side tensors in several dtypes and storage forms, so a first
//! `weightcast serve` shows what the server does.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use crate::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType as D, tensor_shape_proto, type_proto, AttributeProto,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// Deterministic pseudo-random floats in [-scale, scale) (xorshift).
fn floats(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn raw(name: &str, dtype: D, dims: &[i64], bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype as i32),
        dims: dims.to_vec(),
        raw_data: Some(Bytes::from(bytes)),
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], seed: u64) -> TensorProto {
    let n = dims.iter().product::<i64>() as usize;
    let scale = 1.0 / (dims[0] as f32).sqrt();
    raw(name, D::Float, dims, floats(seed, n, scale).iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(if d < 0 {
                tensor_shape_proto::dimension::Value::DimParam("batch".into())
            } else {
                tensor_shape_proto::dimension::Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(D::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(output.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The demo model's bytes.
// Long because it is a description of a model (nodes, tensors, inputs), not
// logic: splitting it would scatter one picture over several functions.
pub fn model_bytes() -> Vec<u8> {
    let (i, h1, h2, o) = (256, 1024, 512, 10);
    let mut scale = node("Constant", &[], "output_scale");
    scale.attribute.push(AttributeProto {
        name: Some("value".into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(TensorProto {
            name: Some("output_scale".into()),
            data_type: Some(D::Float as i32),
            float_data: vec![0.5],
            ..Default::default()
        }),
        ..Default::default()
    });
    let initializer = vec![
        f32_tensor("mlp.0.weight", &[i, h1], 1),
        f32_tensor("mlp.0.bias", &[h1], 2),
        f32_tensor("mlp.2.weight", &[h1, h2], 3),
        f32_tensor("mlp.2.bias", &[h2], 4),
        f32_tensor("mlp.4.weight", &[h2, o], 5),
        f32_tensor("mlp.4.bias", &[o], 6),
        // Side tensors: not used by the graph, there to show other dtypes.
        raw(
            "embedding.fp16",
            D::Float16,
            &[64, 32],
            floats(7, 64 * 32, 1.0).iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        ),
        raw(
            "embedding.bf16",
            D::Bfloat16,
            &[64, 32],
            floats(8, 64 * 32, 1.0).iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        ),
        TensorProto {
            name: Some("class_ids".into()),
            data_type: Some(D::Int64 as i32),
            dims: vec![o],
            int64_data: (0..o).collect(),
            ..Default::default()
        },
        raw("lookup.u8", D::Uint8, &[256], (0..=255u8).collect()),
        raw("mask.bool", D::Bool, &[o], (0..o).map(|k| (k % 2) as u8).collect()),
        TensorProto {
            name: Some("labels".into()),
            data_type: Some(D::String as i32),
            dims: vec![o],
            string_data: (0..o).map(|k| Bytes::from(format!("class-{k}"))).collect(),
            ..Default::default()
        },
    ];
    let graph = GraphProto {
        name: Some("weightcast-demo".into()),
        node: vec![
            node("MatMul", &["x", "mlp.0.weight"], "h0"),
            node("Add", &["h0", "mlp.0.bias"], "h1"),
            node("Relu", &["h1"], "h2"),
            node("MatMul", &["h2", "mlp.2.weight"], "h3"),
            node("Add", &["h3", "mlp.2.bias"], "h4"),
            node("Relu", &["h4"], "h5"),
            node("MatMul", &["h5", "mlp.4.weight"], "h6"),
            node("Add", &["h6", "mlp.4.bias"], "logits"),
            scale,
            node("Mul", &["logits", "output_scale"], "y"),
        ],
        initializer,
        input: vec![value("x", &[-1, i])],
        output: vec![value("y", &[-1, o])],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("weightcast".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        metadata_props: vec![StringStringEntryProto {
            key: Some("description".into()),
            value: Some("weightcast built-in demo MLP".into()),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Writes the demo model to `path` (atomically: temp file, then rename).
pub fn write(path: &Path) -> std::io::Result<()> {
    // A second `serve` must not replace the file under the first (which
    // would reload it): the same bytes are left as they are.
    if std::fs::read(path).is_ok_and(|held| held == model_bytes()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.is_dir() {
        let hint = path.join("demo.onnx");
        return Err(std::io::Error::other(format!("it is a folder; give a file name, e.g. {}", hint.display())));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, model_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Where `weightcast serve` puts the demo model when given none.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    base.join("weightcast").join("demo.onnx")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{OnnxModel, Storage};

    #[test]
    fn a_second_write_leaves_the_same_file_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.onnx");
        write(&path).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "not replaced under a running server");
        std::fs::write(&path, b"other").unwrap();
        write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), model_bytes());
    }

    #[test]
    fn demo_model_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.onnx");
        write(&path).unwrap();
        let m = OnnxModel::open(&path).unwrap();
        assert_eq!(m.tensors.len(), 13);
        let scale = m.tensors.iter().find(|t| t.name == "output_scale").unwrap();
        assert!(scale.constant);
        assert_eq!(scale.storage, Storage::Typed);
        let total: u64 = m.tensors.iter().map(|t| t.nbytes()).sum();
        assert!(total > 2_500_000 && total < 5_000_000, "{total}");
    }
}
