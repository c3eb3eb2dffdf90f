//! Per-tensor statistics and a version's changes as JSON, for the page and
//! for tools (`/v1/models/{m}/stats`, `/v1/models/{m}/changes`).

use serde_json::{json, Value};

use crate::onnx::stats::{Change, Diff, Stats};
use crate::store::{Changes, Model};

/// A number, or its name where JSON has none (`"NaN"`, `"Infinity"`).
fn num(x: f64) -> Value {
    match x {
        x if x.is_nan() => "NaN".into(),
        x if x.is_infinite() => (if x > 0.0 { "Infinity" } else { "-Infinity" }).into(),
        x => x.into(),
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({"count": s.count, "min": num(s.min), "max": num(s.max), "mean": num(s.mean), "std": num(s.std),
        "zeros": s.zeros, "nan": s.nan, "inf": s.inf, "histogram": s.histogram})
}

/// `{model, version, tensors: [{name, stats}]}` (`stats` null for dtypes
/// without figures).
pub fn stats(model: &Model, stats: &[Option<Stats>]) -> Vec<u8> {
    let tensors: Vec<Value> = model
        .tensors
        .iter()
        .zip(stats)
        .map(|(t, s)| json!({"name": t.name, "stats": s.as_ref().map_or(Value::Null, stats_json)}))
        .collect();
    let doc = json!({"model": model.name, "version": model.version(), "tensors": tensors});
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// `{unchanged, tensors: [{name, change, max_abs, rel_l2}]}` (also what
/// `weightcast diff --json` prints).
pub fn diff(d: &Diff) -> Value {
    let tensors: Vec<Value> = d
        .tensors
        .iter()
        .map(|(name, change)| match change {
            Change::Values { max_abs, rel_l2 } => {
                json!({"name": name, "change": "values", "max_abs": num(*max_abs), "rel_l2": num(*rel_l2)})
            }
            Change::Replaced => json!({"name": name, "change": "replaced"}),
            Change::Added => json!({"name": name, "change": "added"}),
            Change::Removed => json!({"name": name, "change": "removed"}),
        })
        .collect();
    json!({"unchanged": d.unchanged, "tensors": tensors})
}

/// [`diff`] with `{model, version, from_version, from_loaded_at_ms}`.
pub fn changes(model: &Model, c: &Changes) -> Vec<u8> {
    let mut doc = diff(&c.diff);
    doc["model"] = model.name.clone().into();
    doc["version"] = model.version().into();
    doc["from_version"] = c.from_version.clone().into();
    doc["from_loaded_at_ms"] = c.from_loaded_at_ms.into();
    serde_json::to_vec(&doc).unwrap_or_default()
}
