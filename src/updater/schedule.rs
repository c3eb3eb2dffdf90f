//! When the next round starts: the interval with jitter, backoff after
//! failures, or the hub's Retry-After.

use std::time::Duration;

/// The wait before the next round: the interval with random jitter after a
/// success; after failures, exponential backoff (capped) with jitter, or what
/// the hub asked for with Retry-After.
pub fn next_wait(interval: Duration, jitter: f64, failures: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(r) = retry_after {
        return r;
    }
    let base = if failures == 0 {
        interval.as_secs_f64()
    } else {
        (interval.as_secs_f64() * 2f64.powi(failures.min(16) as i32)).min(MAX_BACKOFF.as_secs_f64())
    };
    let spread = base * jitter * (2.0 * random_unit() - 1.0);
    Duration::from_secs_f64((base + spread).max(0.0))
}

/// Backoff after failures never waits longer than this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

fn random_unit() -> f64 {
    // Jitter needs no cryptography: the clock's nanoseconds and the pid.
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = n ^ ((std::process::id() as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_jitter_back_off_and_obey_retry_after() {
        let i = Duration::from_secs(30);
        for _ in 0..50 {
            let w = next_wait(i, 0.1, 0, None).as_secs_f64();
            assert!((27.0..=33.0).contains(&w), "{w}");
            let b = next_wait(i, 0.1, 2, None).as_secs_f64();
            assert!((108.0..=132.0).contains(&b), "{b}");
            assert!(next_wait(i, 0.1, 30, None) <= MAX_BACKOFF.mul_f64(1.1));
        }
        assert_eq!(next_wait(i, 0.1, 3, Some(Duration::from_secs(7))), Duration::from_secs(7));
    }
}
