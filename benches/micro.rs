//! Micro benchmarks (criterion): the CPU work behind each response, in GB/s,
//! beside `memcpy` of the same bytes. Run with `cargo bench --bench micro`
//! (scripts/bench.sh runs it and prints the ratios).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::slice::HalfFloatSliceExt;
use sha2::Digest;
use weightcast::encode::{bytegroup, zstd_frame, zstd_planes};
use weightcast::onnx::cast;
use weightcast::onnx::DataType;

/// float32 weights shaped like a trained layer's: N(0, 0.02), as LE bytes.
fn weights(n: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .flat_map(|_| {
            // Box-Muller
            let (u, v) = (uniform(), uniform());
            let g = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            ((g * 0.02) as f32).to_le_bytes()
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let data = weights(16 << 20); // 64 MiB
    let floats: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut g = c.benchmark_group("convert");
    g.throughput(Throughput::Bytes(data.len() as u64)).sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("memcpy", |b| {
        let mut dst = vec![0u8; data.len()];
        b.iter(|| dst.copy_from_slice(black_box(&data)))
    });
    g.bench_function("f32_to_f16_half_slice", |b| {
        let mut dst = vec![half::f16::ZERO; floats.len()];
        b.iter(|| dst.convert_from_f32_slice(black_box(&floats)))
    });
    g.bench_function("f32_to_f16_served", |b| {
        b.iter(|| cast::cast(DataType::Float, black_box(&data), cast::Target::F16))
    });
    g.bench_function("f32_to_bf16_served", |b| {
        b.iter(|| cast::cast(DataType::Float, black_box(&data), cast::Target::Bf16))
    });
    g.bench_function("sha256", |b| b.iter(|| sha2::Sha256::digest(black_box(&data))));
    g.bench_function("crc32", |b| b.iter(|| crc32fast::hash(black_box(&data))));
    g.bench_function("bytegroup_split", |b| b.iter(|| bytegroup::split(black_box(&data), 4, true)));
    let planes = bytegroup::split(&data, 4, true);
    g.bench_function("bytegroup_join", |b| b.iter(|| bytegroup::join(black_box(&planes), 4, true)));
    g.finish();

    let small = &data[..16 << 20]; // 16 MiB for the slower codecs
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(small.len() as u64)).sample_size(10).measurement_time(Duration::from_secs(3));
    for level in [1, 3, 9] {
        let frame = zstd_frame(small, level).expect("compresses");
        eprintln!("zstd level {level}: ratio {:.4}", frame.len() as f64 / small.len() as f64);
        g.bench_function(format!("compress_l{level}"), |b| b.iter(|| zstd_frame(black_box(small), level)));
        g.bench_function(format!("decompress_l{level}"), |b| {
            b.iter(|| zstd::bulk::decompress(black_box(&frame), small.len()))
        });
    }
    let grouped = bytegroup::split(small, 4, true);
    let frame = zstd_planes(&grouped, grouped.len() / 4, 0, 3).expect("compresses");
    eprintln!("bytegroup+zstd level 3: ratio {:.4}", frame.len() as f64 / small.len() as f64);
    g.bench_function("bytegroup_compress_l3", |b| {
        b.iter(|| zstd_planes(&bytegroup::split(black_box(small), 4, true), small.len() / 4, 0, 3))
    });
    g.bench_function("bytegroup_decompress_l3", |b| {
        b.iter(|| {
            let planes = zstd::stream::decode_all(black_box(&frame[..])).expect("ok");
            bytegroup::join(&planes, 4, true)
        })
    });
    g.finish();
}

/// What signing costs the hub and checking costs a device, per manifest.
fn signatures(c: &mut Criterion) {
    use weightcast::wire::{proto::Manifest, signature};
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut m = Manifest {
        model: "detector".into(),
        version: "ab".repeat(32),
        published_at_ms: 1,
        expires_at_ms: u64::MAX,
        ..Default::default()
    };
    let mut g = c.benchmark_group("signature");
    g.bench_function("sign_manifest", |b| b.iter(|| signature::sign(black_box(&mut m), &key)));
    signature::sign(&mut m, &key);
    let trusted = [key.verifying_key()];
    g.bench_function("check_manifest", |b| b.iter(|| signature::check(black_box(&m), &trusted, 0, None)));
    g.finish();
}

criterion_group!(micro, benches, signatures);
criterion_main!(micro);
