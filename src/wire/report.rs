//! A device's report, riding on its requests to the hub as headers (the
//! hub's API stays GET/HEAD only): who it is, the version it runs and in
//! which state, and the last version that failed on it and why. The hub
//! keeps the last report per model and device (its fleet table) and offers
//! each device the version its rollout stage allows.

/// The device's id (`pull --device-id`; default `/etc/machine-id` or the hostname).
pub const DEVICE: &str = "X-Weightcast-Device";
/// The version `current` points at on the device (empty: none).
pub const DEVICE_VERSION: &str = "X-Weightcast-Device-Version";
/// [`DeviceState`] of that version.
pub const DEVICE_STATE: &str = "X-Weightcast-Device-State";
/// The newest version that failed on the device: `VERSION CAUSE REASON`,
/// the reason percent-encoded (absent: none failed).
pub const DEVICE_FAILURE: &str = "X-Weightcast-Device-Failure";

/// Longest device id: ids are names (a machine id is 32 hex digits).
pub const MAX_DEVICE_ID: usize = 128;
/// Longest failure reason sent (a report is a header, not a log).
pub const MAX_REASON: usize = 200;

/// What the device's current version is to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Nothing installed yet.
    None,
    /// Installed and past its health gate (or installed, without one).
    Committed,
    /// Installed, its health command not yet passed (`--health`).
    Trial,
    /// Back on this version after the newer one failed here.
    RolledBack,
}

impl DeviceState {
    /// Its name in the header, the fleet table and `/v1/fleet`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceState::None => "none",
            DeviceState::Committed => "committed",
            DeviceState::Trial => "trial",
            DeviceState::RolledBack => "rolled-back",
        }
    }

    /// The state a header names.
    pub fn parse(s: &str) -> Option<DeviceState> {
        [DeviceState::None, DeviceState::Committed, DeviceState::Trial, DeviceState::RolledBack]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

/// A version that failed on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFailure {
    /// The version.
    pub version: String,
    /// Which gate failed it: `check`, `health` or `rollback`.
    pub cause: String,
    /// What failed, in words (at most [`MAX_REASON`] bytes).
    pub reason: String,
}

/// One device's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// The device's id.
    pub device: String,
    /// Its current version, if any.
    pub version: Option<String>,
    /// What that version is to it.
    pub state: DeviceState,
    /// The newest version that failed on it.
    pub failure: Option<DeviceFailure>,
}

/// Characters escaped in a failure's reason: all but unreserved ones and space.
const REASON: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b' ').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Whether `id` can be a device id: 1 to [`MAX_DEVICE_ID`] visible ASCII
/// characters (a header value; the hub escapes it wherever it shows it).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DEVICE_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

impl DeviceReport {
    /// The report as request headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (DEVICE, self.device.clone()),
            (DEVICE_VERSION, self.version.clone().unwrap_or_default()),
            (DEVICE_STATE, self.state.name().to_string()),
        ];
        if let Some(f) = &self.failure {
            let mut reason: String = f.reason.chars().filter(|c| !c.is_control()).collect();
            while reason.len() > MAX_REASON {
                reason.pop();
            }
            let reason = percent_encoding::utf8_percent_encode(&reason, REASON);
            h.push((DEVICE_FAILURE, format!("{} {} {reason}", f.version, f.cause)));
        }
        h
    }

    /// The report a request's headers carry (`header`: a header's value by
    /// name), or `None` where it names no valid device. A malformed part is
    /// left out, never an error: a report must not cost a device its poll.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<DeviceReport> {
        let device = header(DEVICE).map(str::trim).filter(|d| valid_device_id(d))?.to_string();
        let hex = |v: &str| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
        let version = header(DEVICE_VERSION).map(str::trim).filter(|v| hex(v)).map(str::to_string);
        let state = header(DEVICE_STATE).and_then(|s| DeviceState::parse(s.trim())).unwrap_or(DeviceState::None);
        let failure = header(DEVICE_FAILURE).and_then(|f| {
            let mut parts = f.trim().splitn(3, ' ');
            let (version, cause) = (parts.next()?, parts.next()?);
            let reason = percent_encoding::percent_decode_str(parts.next().unwrap_or("")).decode_utf8_lossy();
            let known = matches!(cause, "check" | "health" | "rollback");
            (hex(version) && known).then(|| DeviceFailure {
                version: version.to_string(),
                cause: cause.to_string(),
                reason: reason.chars().filter(|c| !c.is_control()).take(MAX_REASON).collect(),
            })
        });
        Some(DeviceReport { device, version, state, failure })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_its_headers_and_a_reason_of_any_text() {
        let report = DeviceReport {
            device: "jetson-07".into(),
            version: Some("ab".repeat(32)),
            state: DeviceState::RolledBack,
            failure: Some(DeviceFailure {
                version: "cd".repeat(32),
                cause: "health".into(),
                reason: "health: `curl localhost:9000/ok` exited 7 — café".into(),
            }),
        };
        let headers = report.headers();
        assert!(headers.iter().all(|(_, v)| v.is_ascii()), "{headers:?}");
        let back = DeviceReport::from_headers(|n| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str()));
        assert_eq!(back, Some(report));
    }

    #[test]
    fn a_report_without_a_valid_device_id_is_none_and_bad_parts_are_left_out() {
        let get = |pairs: &'static [(&'static str, &'static str)]| {
            DeviceReport::from_headers(move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
        };
        assert_eq!(get(&[(DEVICE_VERSION, "ab")]), None);
        assert_eq!(get(&[(DEVICE, "has space")]), None);
        let r = get(&[(DEVICE, "d1"), (DEVICE_VERSION, "../etc"), (DEVICE_STATE, "bogus"), (DEVICE_FAILURE, "ab x y")])
            .unwrap();
        assert_eq!((r.version, r.state, r.failure), (None, DeviceState::None, None));
        assert!(valid_device_id(&"x".repeat(MAX_DEVICE_ID)) && !valid_device_id(&"x".repeat(MAX_DEVICE_ID + 1)));
    }
}
