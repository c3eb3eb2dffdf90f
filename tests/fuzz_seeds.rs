//! The short form of the fuzz targets (`fuzz/`, cargo-fuzz, run for minutes
//! with nightly; see README, Reliability): each entry point of
//! `weightcast::fuzz` gets real inputs and a few thousand deterministic
//! mutations of them (truncations, byte flips, splices, length-field
//! blow-ups) and must return every time.

use weightcast::fuzz;

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 => data.truncate(rng.below(data.len() + 1)),
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            2 if !data.is_empty() => {
                // A varint (a length, a count) blown up to its maximum.
                let at = rng.below(data.len());
                let end = (at + 10).min(data.len());
                for b in &mut data[at..end] {
                    *b = 0xff;
                }
            }
            3 => {
                let (a, b) = (rng.below(data.len() + 1), rng.below(data.len() + 1));
                let piece = data[a.min(b)..a.max(b)].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, piece);
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data
}

fn run(seeds: &[Vec<u8>], target: fn(&[u8]), rounds: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in seeds {
        target(seed);
        for _ in 0..rounds {
            target(&mutate(seed, &mut rng));
        }
    }
}

/// The committed seeds of a target (`fuzz/seeds/TARGET`, made by `fuzz/seed.sh`).
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn model_parsing_and_graph_rewriting_survive_mutations() {
    run(&[fuzz::model_input(&weightcast::demo::model_bytes(), &[])], |d| _ = fuzz::model(d), 1500);
}

#[test]
fn every_committed_model_seed_parses_so_the_fuzzer_starts_deep() {
    let seeds = seeds("model");
    assert!(seeds.len() >= 8, "fuzz/seeds/model holds {} seeds", seeds.len());
    for seed in &seeds {
        assert!(seed.len() <= 128 << 10, "a seed of {} bytes is over scripts/fuzz.sh's -max_len", seed.len());
        assert!(fuzz::model(seed), "a committed seed no longer parses: regenerate with fuzz/seed.sh");
    }
    run(&seeds, |d| _ = fuzz::model(d), 100);
}

#[test]
fn request_heads_survive_mutations() {
    let heads = [
        b"GET /v1/models/demo/weights?names=a,b&dtype=f16 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n".to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        // Found by fuzzing: a non-ASCII header value made http-types panic.
        "GET / HTTP/1.1\r\nHost: x\r\nX: \u{e9}\r\n\r\n".as_bytes().to_vec(),
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    run(&heads, fuzz::request_head, 3000);
}

#[test]
fn bundles_and_manifests_survive_mutations() {
    use prost::Message;
    use weightcast::wire::proto::{Bundle, Manifest, Tensor, TensorInfo};
    let piece = |offset: u64, data: &[u8]| Tensor {
        name: "t".into(),
        data: bytes::Bytes::copy_from_slice(data),
        offset,
        total_bytes: 8,
        ..Default::default()
    };
    let bundle = Bundle { tensors: vec![piece(0, b"abcd"), piece(4, b"efgh")] }.encode_to_vec();
    run(&[bundle], fuzz::bundle, 3000);
    let manifest = Manifest {
        model: "m".into(),
        version: "v".into(),
        tensors: vec![TensorInfo { name: "w".into(), dtype: 1, dims: vec![2], nbytes: 8, ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec();
    let mut seed = vec![0x40];
    seed.extend(manifest);
    seed.extend(weightcast::demo::model_bytes());
    run(&[seed], fuzz::manifest, 1500);
}
