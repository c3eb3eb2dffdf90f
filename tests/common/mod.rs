//! What the Rust integration tests share: the server in-process.

use std::sync::Arc;

use weightcast::http::{self, ServeOptions, State};
use weightcast::store::{self, Cache, Store};

/// The demo model served in-process on a free port: (its base URL, the
/// folder holding the model, kept while the test runs).
pub fn start() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.onnx");
    weightcast::demo::write(&path).unwrap();
    let specs = store::specs(&[(None, path)]).unwrap();
    let store = Store::load(&specs, None, Arc::new(Cache::new(64 << 20)));
    let state = Arc::new(State::new(store, ServeOptions::default(), None));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (keep_running, stop) = smol::channel::bounded::<()>(1);
    std::mem::forget(keep_running); // never stopped: the test process ends it
    std::thread::spawn(move || http::run(listener, state, 1024, stop));
    (format!("http://{addr}"), dir)
}
