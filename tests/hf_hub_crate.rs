//! Hugging Face's Rust client (the `hf-hub` crate, blocking API) against a
//! hub in-process (issue #26 part 1): it resolves `main`, downloads both
//! files into its cache, and they are the hub's bytes.

mod common;
use common::start;

#[test]
fn the_hf_hub_crate_downloads_both_files_of_a_model() {
    let (base, dir) = start();
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_endpoint(base.clone())
        .with_cache_dir(dir.path().join("hf-cache"))
        .with_progress(false)
        .build()
        .unwrap();
    let repo = api.model("demo".to_string());
    let files = [
        ("model.onnx", "/demo/resolve/main/model.onnx"),
        ("model.safetensors", "/demo/resolve/main/model.safetensors"),
    ];
    for (file, route) in files {
        let path = repo.get(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let got = std::fs::read(&path).unwrap();
        let want = ureq_get(&format!("{base}{route}"));
        assert_eq!(got.len(), want.len(), "{file}");
        assert!(got == want, "{file}: the bytes differ");
    }
    let info = repo.info().unwrap();
    assert_eq!(info.siblings.len(), 2);
    // The demo holds a STRING tensor: the weights file is every other one.
    let st = std::fs::read(repo.get("model.safetensors").unwrap()).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + header_len]).unwrap();
    assert_eq!(header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").count(), 12);
}

/// The hub's bytes, in identity.
fn ureq_get(url: &str) -> Vec<u8> {
    smol::block_on(async {
        let url = http_types::Url::parse(url).unwrap();
        let stream = smol::net::TcpStream::connect(url.socket_addrs(|| None).unwrap()[0]).await.unwrap();
        let mut req = http_types::Request::new(http_types::Method::Get, url);
        req.insert_header("Accept-Encoding", "identity");
        let mut res = async_h1::connect(stream, req).await.unwrap();
        res.body_bytes().await.unwrap()
    })
}
