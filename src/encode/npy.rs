//! NumPy's `.npy` (one tensor) and `.npz` (a zip of `.npy` members, what
//! `numpy.savez` writes and `numpy.load` opens).
//!
//! npz is written by hand because it must stream: stored members have every
//! size and CRC known before the first byte (CRCs come from the store), so the
//! body has a Content-Length and the data comes straight from the memory map.
//! Deflated members (`?compress=1`) are compressed one at a time, each
//! preceded by a local header written once its sizes are known, and cached.
//! Zip64 records are added only where a size or offset needs them.

use std::io::Write;

use bytes::Bytes;

use super::{EncodeError, Format, Piece, Selection};
use crate::onnx::DataType;
use crate::wire::safe_name;

/// The numpy dtype descriptor of an ONNX dtype, where numpy has one.
pub fn descr(d: DataType) -> Option<&'static str> {
    use DataType::*;
    Some(match d {
        Float => "<f4",
        Double => "<f8",
        Float16 => "<f2",
        Int8 => "|i1",
        Uint8 => "|u1",
        Int16 => "<i2",
        Uint16 => "<u2",
        Int32 => "<i4",
        Uint32 => "<u4",
        Int64 => "<i8",
        Uint64 => "<u8",
        Bool => "|b1",
        Complex64 => "<c8",
        Complex128 => "<c16",
        _ => return None,
    })
}

/// A `.npy` header (format 1.0; 2.0 when the dict outgrows 64 KiB), padded so
/// the data starts 64-byte aligned.
pub fn header(descr: &str, dims: &[i64]) -> Vec<u8> {
    let shape = match dims {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        ds => format!("({})", ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let v1 = dict.len() + 11 <= u16::MAX as usize;
    let prefix = if v1 { 10 } else { 12 };
    let total = (prefix + dict.len() + 1).next_multiple_of(64);
    dict.push_str(&" ".repeat(total - prefix - dict.len() - 1));
    dict.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    if v1 {
        out.extend([1, 0]);
        out.extend((dict.len() as u16).to_le_bytes());
    } else {
        out.extend([2, 0]);
        out.extend((dict.len() as u32).to_le_bytes());
    }
    out.extend(dict.into_bytes());
    out
}

/// One tensor as `.npy`.
pub fn npy_pieces(sel: &Selection) -> Result<Vec<Piece>, EncodeError> {
    if sel.tensors.len() != 1 || !sel.single {
        return Err(EncodeError::SingleOnly(Format::Npy));
    }
    sel.expressible(Format::Npy, |d| descr(d).is_some())?;
    let i = sel.tensors[0];
    let m = sel.meta(i);
    let head = header(descr(m.dtype).unwrap_or_default(), sel.dims(i));
    Ok(vec![Piece::Inline(head.into()), Piece::Data { tensor: i, range: 0..m.nbytes as usize }])
}

/// One zip member as laid out.
struct Member {
    name: Vec<u8>,
    npy_header: Vec<u8>,
    /// CRC-32 and length of the uncompressed member (npy header + data).
    crc: u32,
    size: u64,
}

/// Sizes and offsets from here on need zip64 fields.
const ZIP64_LIMIT: u64 = 0xFFFF_FFFF;

/// The selection as `.npz`, members named `safe_name(tensor).npy`.
pub fn npz_pieces(sel: &Selection, deflate: bool) -> Result<Vec<Piece>, EncodeError> {
    sel.expressible(Format::Npz, |d| descr(d).is_some())?;
    let members: Vec<Member> = sel
        .tensors
        .iter()
        .map(|&i| {
            let m = sel.meta(i);
            let npy_header = header(descr(m.dtype).unwrap_or_default(), sel.dims(i));
            let mut crc = crc32fast::Hasher::new();
            crc.update(&npy_header);
            crc.combine(&crc32fast::Hasher::new_with_initial_len(m.crc32, m.nbytes));
            Member {
                name: format!("{}.npy", safe_name(sel.name(i))).into_bytes(),
                size: npy_header.len() as u64 + m.nbytes,
                npy_header,
                crc: crc.finalize(),
            }
        })
        .collect();
    if deflate {
        return Ok(deflated(sel, members));
    }
    let mut out = Vec::new();
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for (member, &i) in members.into_iter().zip(&sel.tensors) {
        let local = local_header(&member.name, 0, member.crc, member.size, member.size, ZIP64_LIMIT);
        let data_len = sel.meta(i).nbytes as usize;
        let next = offset + (local.len() + member.npy_header.len() + data_len) as u64;
        let mut head = local;
        head.extend(&member.npy_header);
        out.push(Piece::Inline(head.into()));
        out.push(Piece::Data { tensor: i, range: 0..data_len });
        entries.push(Entry {
            name: member.name,
            method: 0,
            crc: member.crc,
            compressed: member.size,
            size: member.size,
            offset,
        });
        offset = next;
    }
    out.push(Piece::Inline(central_directory(&entries, offset, ZIP64_LIMIT).into()));
    Ok(out)
}

/// Members deflated one at a time (cached), then the directory, which needs
/// every compressed size: it asks the cache again, and waits for a member
/// still being compressed rather than guessing.
fn deflated(sel: &Selection, members: Vec<Member>) -> Vec<Piece> {
    let members = std::sync::Arc::new(members);
    let compressed = |sel: &Selection, k: usize, members: &[Member]| -> Result<Bytes, String> {
        let i = sel.tensors[k];
        let key = sel.model.cache_key(i, format!("npz-deflate-{:?}", sel.repr));
        sel.model.cache().get_or_compute(key, || {
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&members[k].npy_header).map_err(|e| e.to_string())?;
            z.write_all(&sel.bytes(i)).map_err(|e| e.to_string())?;
            z.finish().map(Bytes::from).map_err(|e| e.to_string())
        })
    };
    let mut out: Vec<Piece> = Vec::new();
    for k in 0..members.len() {
        let (sel, members) = (sel.clone(), members.clone());
        out.push(Piece::Deferred(Box::new(move || {
            let data = compressed(&sel, k, &members).map_err(std::io::Error::other)?;
            let m = &members[k];
            let mut chunk = local_header(&m.name, 8, m.crc, data.len() as u64, m.size, ZIP64_LIMIT);
            chunk.extend_from_slice(&data);
            Ok(chunk.into())
        })));
    }
    let sel = sel.clone();
    out.push(Piece::Deferred(Box::new(move || {
        let mut entries = Vec::new();
        let mut offset = 0u64;
        for (k, m) in members.iter().enumerate() {
            let data = compressed(&sel, k, &members).map_err(std::io::Error::other)?;
            let local_len = local_header(&m.name, 8, m.crc, data.len() as u64, m.size, ZIP64_LIMIT).len() as u64;
            entries.push(Entry {
                name: m.name.clone(),
                method: 8,
                crc: m.crc,
                compressed: data.len() as u64,
                size: m.size,
                offset,
            });
            offset += local_len + data.len() as u64;
        }
        Ok(central_directory(&entries, offset, ZIP64_LIMIT).into())
    })));
    out
}

/// What the central directory records of a member.
struct Entry {
    name: Vec<u8>,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
}

/// A local file header; `limit` is where zip64 fields start (`ZIP64_LIMIT`,
/// lowered only by tests).
fn local_header(name: &[u8], method: u16, crc: u32, compressed: u64, size: u64, limit: u64) -> Vec<u8> {
    let zip64 = size >= limit || compressed >= limit;
    let mut h = Vec::with_capacity(30 + name.len() + 20);
    h.extend(0x0403_4b50u32.to_le_bytes());
    h.extend((if zip64 { 45u16 } else { 20u16 }).to_le_bytes());
    h.extend(0u16.to_le_bytes()); // flags: sizes and CRC are in this header
    h.extend(method.to_le_bytes());
    h.extend(0u16.to_le_bytes()); // time 00:00
    h.extend(0x21u16.to_le_bytes()); // date 1980-01-01
    h.extend(crc.to_le_bytes());
    if zip64 {
        h.extend(u32::MAX.to_le_bytes());
        h.extend(u32::MAX.to_le_bytes());
    } else {
        h.extend((compressed as u32).to_le_bytes());
        h.extend((size as u32).to_le_bytes());
    }
    h.extend((name.len() as u16).to_le_bytes());
    h.extend((if zip64 { 20u16 } else { 0 }).to_le_bytes());
    h.extend(name);
    if zip64 {
        h.extend(1u16.to_le_bytes());
        h.extend(16u16.to_le_bytes());
        h.extend(size.to_le_bytes());
        h.extend(compressed.to_le_bytes());
    }
    h
}

/// The central directory and end records, for entries ending at `cd_offset`.
fn central_directory(entries: &[Entry], cd_offset: u64, limit: u64) -> Vec<u8> {
    let mut out: Vec<u8> = entries.iter().flat_map(|e| central_entry(e, limit)).collect();
    let cd_size = out.len() as u64;
    out.extend(end_records(entries.len() as u64, cd_size, cd_offset, limit));
    out
}

/// One entry's central directory header (zip64 extra field for values at or
/// past `limit`).
fn central_entry(e: &Entry, limit: u64) -> Vec<u8> {
    let mut cd = Vec::new();
    let mut extra = Vec::new();
    let mut field = |v: u64| {
        if v >= limit {
            extra.extend(v.to_le_bytes());
            u32::MAX
        } else {
            v as u32
        }
    };
    let (size, compressed, offset) = (field(e.size), field(e.compressed), field(e.offset));
    let zip64 = !extra.is_empty();
    cd.extend(0x0201_4b50u32.to_le_bytes());
    cd.extend((if zip64 { 45u16 } else { 20u16 }).to_le_bytes()); // made by
    cd.extend((if zip64 { 45u16 } else { 20u16 }).to_le_bytes()); // needed
    cd.extend(0u16.to_le_bytes());
    cd.extend(e.method.to_le_bytes());
    cd.extend(0u16.to_le_bytes());
    cd.extend(0x21u16.to_le_bytes());
    cd.extend(e.crc.to_le_bytes());
    cd.extend(compressed.to_le_bytes());
    cd.extend(size.to_le_bytes());
    cd.extend((e.name.len() as u16).to_le_bytes());
    cd.extend((if zip64 { extra.len() as u16 + 4 } else { 0 }).to_le_bytes());
    cd.extend(0u16.to_le_bytes()); // comment
    cd.extend(0u16.to_le_bytes()); // disk
    cd.extend(0u16.to_le_bytes()); // internal attributes
    cd.extend(0u32.to_le_bytes()); // external attributes
    cd.extend(offset.to_le_bytes());
    cd.extend(&e.name);
    if zip64 {
        cd.extend(1u16.to_le_bytes());
        cd.extend((extra.len() as u16).to_le_bytes());
        cd.extend(&extra);
    }
    cd
}

/// The end of central directory record, preceded by the zip64 ones when a
/// count, size or offset does not fit the classic fields.
fn end_records(count: u64, cd_size: u64, cd_offset: u64, limit: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if count >= 0xFFFF || cd_size >= limit || cd_offset >= limit {
        let eocd64_offset = cd_offset + cd_size;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(cd_size.to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(eocd64_offset.to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend((count.min(0xFFFF) as u16).to_le_bytes());
    out.extend((count.min(0xFFFF) as u16).to_le_bytes());
    let field = |v: u64| if v >= limit { u32::MAX } else { v as u32 };
    out.extend(field(cd_size).to_le_bytes());
    out.extend(field(cd_offset).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_are_aligned_and_numpy_shaped() {
        let h = header("<f4", &[3, 5]);
        assert_eq!(h.len() % 64, 0);
        assert!(std::str::from_utf8(&h[10..])
            .unwrap()
            .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }"));
        assert!(std::str::from_utf8(&header("|b1", &[])[10..]).unwrap().contains("'shape': ()"));
        assert!(std::str::from_utf8(&header("|b1", &[7])[10..]).unwrap().contains("'shape': (7,)"));
    }

    /// Zip64 records, which real models only need past 4 GiB, checked at small
    /// sizes by forcing the limit: Python's zipfile must read them.
    #[test]
    fn zip64_records_are_what_zipfile_reads() {
        let data = b"hello zip64".to_vec();
        let crc = crc32fast::hash(&data);
        // Two members, the second at a non-zero offset, with every size and
        // offset at or past the (lowered) limit.
        let limit = 1;
        let mut zip = Vec::new();
        let mut entries = Vec::new();
        for k in 0..2u8 {
            let name = [b'a' + k].iter().chain(b".npy").copied().collect::<Vec<u8>>();
            entries.push(Entry {
                name: name.clone(),
                method: 0,
                crc,
                compressed: data.len() as u64,
                size: data.len() as u64,
                offset: zip.len() as u64,
            });
            zip.extend(local_header(&name, 0, crc, data.len() as u64, data.len() as u64, limit));
            zip.extend(&data);
        }
        let offset = zip.len() as u64;
        zip.extend(central_directory(&entries, offset, limit));
        assert!(zip.windows(4).any(|w| w == 0x0606_4b50u32.to_le_bytes()), "zip64 end record present");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.zip");
        std::fs::write(&path, &zip).unwrap();
        let check = std::process::Command::new("python3")
            .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(z.read('b.npy').decode())"])
            .arg(&path)
            .output()
            .expect("python3 runs");
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).trim(),
            "hello zip64",
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
