//! The wire contract between a hub and its clients: what both sides must
//! agree on byte for byte, and nothing else.
//!
//! The server (`encode`, `http`) writes it and the updater reads it; neither
//! reaches into the other. It holds the generated `weightcast.v1` protobuf
//! types, header names, the version formula and the file names tensors get
//! outside the hub (`/graph` locations, a device's version folders).
//! `proto/README.md` is the same contract in prose, for other
//! implementations.

use sha2::{Digest, Sha256};

use crate::onnx::{DataType, TensorData};

pub mod report;
pub mod signature;

/// Messages of `proto/weightcast/v1/weightcast.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/weightcast.v1.rs"));
}

/// Response header naming the version of the stored weights an answer comes
/// from, so a client can tell that several answers belong together.
pub const MODEL_VERSION: &str = "X-Weightcast-Model-Version";

/// The version of a model representation: hex sha256 over the graph's digest
/// and, per tensor in manifest order, length-prefixed fields. Every field is
/// either fixed-size or prefixed with its length, so no two different lists
/// of names, dtypes, dims and digests give the same bytes (a tab or newline
/// in a name changes nothing). Documented in `proto/README.md`.
pub fn version<'a>(
    graph_sha256: &[u8; 32],
    tensors: impl Iterator<Item = (&'a str, DataType, &'a [i64], &'a [u8; 32])>,
) -> String {
    let mut h = Sha256::new();
    h.update(VERSION_DOMAIN);
    h.update(graph_sha256);
    for (name, dtype, dims, digest) in tensors {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((dtype as u32).to_le_bytes());
        h.update((dims.len() as u64).to_le_bytes());
        for d in dims {
            h.update(d.to_le_bytes());
        }
        h.update(digest);
    }
    hex::encode(h.finalize())
}

/// Prefix of the hashed bytes: a version can never equal a digest of other
/// data by accident, and a later formula can change the prefix.
const VERSION_DOMAIN: &[u8] = b"weightcast.v1 version\n";

/// sha256 of a tensor's data as served (the manifest's `sha256`). For STRING
/// tensors: over each element as its length (u64 little-endian) followed by
/// its bytes.
pub fn digest(data: &TensorData) -> [u8; 32] {
    match data {
        TensorData::Bytes(b) => Sha256::digest(b).into(),
        TensorData::Strings(s) => {
            let mut h = Sha256::new();
            for e in s {
                h.update((e.len() as u64).to_le_bytes());
                h.update(e);
            }
            h.finalize().into()
        }
    }
}

/// The safetensors name of an ONNX dtype, where safetensors has one.
/// Sub-byte types are left out: safetensors' F4/F6 packing is not specified
/// to match ONNX's, and a wrong guess would corrupt weights silently.
pub fn safetensors_dtype(d: DataType) -> Option<&'static str> {
    use DataType::*;
    Some(match d {
        Float => "F32",
        Double => "F64",
        Float16 => "F16",
        Bfloat16 => "BF16",
        Int8 => "I8",
        Int16 => "I16",
        Int32 => "I32",
        Int64 => "I64",
        Uint8 => "U8",
        Uint16 => "U16",
        Uint32 => "U32",
        Uint64 => "U64",
        Bool => "BOOL",
        Complex64 => "C64",
        Float8E4M3Fn => "F8_E4M3",
        Float8E5M2 => "F8_E5M2",
        Float8E4M3Fnuz => "F8_E4M3FNUZ",
        Float8E5M2Fnuz => "F8_E5M2FNUZ",
        Float8E8M0 => "F8_E8M0",
        String | Complex128 | Int4 | Uint4 | Int2 | Uint2 | Float4E2M1 | Float6E2M3 | Float6E3M2 => return None,
    })
}

/// A tensor name made safe as a file or zip member name, reversibly: every
/// byte outside `A-Z a-z 0-9 . _ -`, and a leading `.`, becomes `%XX`
/// (uppercase hex), so `urllib.parse.unquote` gives the name back.
pub fn safe_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Folder of a model's tensor files, beside `model.onnx`: tensors live in a
/// namespace of their own, so no tensor name can land on the graph or on an
/// updater's own files.
pub const TENSOR_DIR: &str = "tensors";

/// Where a tensor's bytes lie relative to the graph (`/graph`'s external
/// data locations, and a device's version folder): `tensors/` + the safe
/// name + `.bin`. The suffix gives the empty name a file; a safe name too
/// long for a file system (over 200 bytes) is cut and completed with a
/// digest of the whole name (`~` never occurs in a safe name, so the two
/// forms cannot meet).
pub fn tensor_file(name: &str) -> String {
    let safe = safe_name(name);
    if safe.len() <= MAX_SAFE_NAME {
        return format!("{TENSOR_DIR}/{safe}.bin");
    }
    let mut cut = 100;
    // A `%XX` escape is not split.
    while safe.as_bytes()[cut - 1] == b'%' || safe.as_bytes()[cut - 2] == b'%' {
        cut -= 1;
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{TENSOR_DIR}/{}~{}.bin", &safe[..cut], &digest[..32])
}

/// Longest safe name kept whole in [`tensor_file`] (file names are at most
/// 255 bytes on the usual file systems).
const MAX_SAFE_NAME: usize = 200;

/// The first 16 hex digits of a version: enough to tell versions apart in
/// logs and folder names meant for people.
pub fn short(version: &str) -> &str {
    version.get(..16).unwrap_or(version)
}

/// Now, in ms since the Unix epoch (publication times, records).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_are_reversible_and_flat() {
        assert_eq!(safe_name("layer/0/weight"), "layer%2F0%2Fweight");
        assert_eq!(safe_name("100%"), "100%25");
        assert_eq!(safe_name(".."), "%2E.");
        assert_eq!(safe_name("a.b_c-d"), "a.b_c-d");
        assert_eq!(safe_name("ü"), "%C3%BC");
        let safe = safe_name("x/ü %.");
        assert_eq!(percent_encoding::percent_decode_str(&safe).decode_utf8().unwrap(), "x/ü %.");
    }

    #[test]
    fn tensor_files_have_their_own_namespace() {
        assert_eq!(tensor_file("model.onnx"), "tensors/model.onnx.bin");
        assert_eq!(tensor_file(""), "tensors/.bin");
        assert_eq!(tensor_file("a/b"), "tensors/a%2Fb.bin");
        let long = "/".repeat(300);
        let f = tensor_file(&long);
        assert!(f.len() < 200, "{f}");
        assert!(f.starts_with("tensors/%2F") && f.ends_with(".bin"));
        assert_ne!(f, tensor_file(&"/".repeat(301)));
        let mixed = format!("{}{}", "a".repeat(98), "/".repeat(100));
        let f = tensor_file(&mixed);
        let stem = f.trim_start_matches("tensors/").split('~').next().unwrap();
        assert!(percent_encoding::percent_decode_str(stem).decode_utf8().is_ok(), "{stem}");
        assert!(!stem.ends_with('%'));
    }

    #[test]
    fn versions_are_unambiguous() {
        let d = [7u8; 32];
        let g = [1u8; 32];
        let two =
            version(&g, [("x", DataType::Float, &[1i64][..], &d), ("y", DataType::Float, &[1i64][..], &d)].into_iter());
        let forged_name = format!("x\tFLOAT\t1\t{}\ny", hex::encode(d));
        let one = version(&g, [(forged_name.as_str(), DataType::Float, &[1i64][..], &d)].into_iter());
        assert_ne!(one, two);
        let other_graph = version(&[2u8; 32], [("x", DataType::Float, &[1i64][..], &d)].into_iter());
        assert_ne!(other_graph, version(&g, [("x", DataType::Float, &[1i64][..], &d)].into_iter()));
        assert_ne!(
            version(&g, [("x", DataType::Float, &[12i64][..], &d)].into_iter()),
            version(&g, [("x", DataType::Float, &[1i64, 2][..], &d)].into_iter())
        );
    }
}
