//! The server in-process, spoken to with async-h1's client: framing, streaming
//! and negotiation as a Rust client sees them.

use http_types::{Method, Request, Response, Url};
use prost::Message;
use weightcast::wire::proto::{Bundle, Manifest};

mod common;
use common::start;

fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> (Response, Vec<u8>) {
    smol::block_on(async {
        let url = Url::parse(&format!("{base}{path}")).unwrap();
        let stream = smol::net::TcpStream::connect(url.socket_addrs(|| None).unwrap()[0]).await.unwrap();
        let mut req = Request::new(Method::Get, url);
        for (k, v) in headers {
            req.insert_header(*k, *v);
        }
        let mut res = async_h1::connect(stream, req).await.unwrap();
        let body = res.body_bytes().await.unwrap();
        (res, body)
    })
}

#[test]
fn bundle_digests_match_the_manifest() {
    let (base, _dir) = start();
    let (res, body) = get(&base, "/v1/models/demo", &[]);
    assert_eq!(res.status(), 200);
    let manifest = Manifest::decode(body.as_slice()).unwrap();
    assert_eq!(manifest.tensors.len(), 13);

    for accept_encoding in ["identity", "zstd"] {
        let (res, body) = get(&base, "/v1/models/demo/weights", &[("Accept-Encoding", accept_encoding)]);
        assert_eq!(res.status(), 200);
        let body = if accept_encoding == "zstd" {
            assert_eq!(res.header("Content-Encoding").unwrap().as_str(), "zstd");
            zstd::stream::decode_all(body.as_slice()).unwrap()
        } else {
            body
        };
        let bundle = Bundle::decode(body.as_slice()).unwrap();
        for (t, info) in bundle.tensors.iter().zip(&manifest.tensors) {
            assert_eq!(t.name, info.name);
            if t.strings.is_empty() {
                use sha2::Digest;
                assert_eq!(hex::encode(sha2::Sha256::digest(&t.data)), info.sha256, "{}", t.name);
            }
        }
    }
}

#[test]
fn f16_manifest_and_bundle_agree() {
    let (base, _dir) = start();
    let (_, body) = get(&base, "/v1/models/demo?dtype=f16", &[]);
    let manifest = Manifest::decode(body.as_slice()).unwrap();
    let (_, body) = get(&base, "/v1/models/demo/weights?dtype=f16&names=mlp.0.weight,class_ids", &[]);
    let bundle = Bundle::decode(body.as_slice()).unwrap();
    assert_eq!(bundle.tensors.len(), 2);
    let w = &bundle.tensors[0];
    assert_eq!((w.dtype, w.source_dtype), (10, 1), "FLOAT16 cast from FLOAT");
    assert_eq!(w.data.len(), 256 * 1024 * 2);
    let info = manifest.tensors.iter().find(|t| t.name == "mlp.0.weight").unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&w.data)), info.sha256);
    assert_eq!(bundle.tensors[1].dtype, 7, "INT64 passes unchanged");
}
