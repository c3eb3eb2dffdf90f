//! The device's own commands (`--check CMD`, `--exec`, `--health`), run with
//! `sh -c` and `$WEIGHTCAST_DIR`; a command that cannot run at all (not
//! found, not executable: the shell's 127 and 126) is the device's fault,
//! never the version's.

use std::path::Path;
use std::time::Duration;

/// Why a command did not succeed.
#[derive(Debug)]
pub(super) enum CommandError {
    /// It ran and failed: "exit 1", "killed by signal 9", "no answer in 5s".
    Failed(String),
    /// It could not run: a fault of the device, to fix there.
    CannotRun(String),
}

/// Runs `cmd` for the version in `dir`, killed after `deadline` if given.
pub(super) async fn run_command(cmd: &str, dir: &Path, deadline: Option<Duration>) -> Result<(), CommandError> {
    let version = dir.file_name().map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
    let mut child = smol::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("WEIGHTCAST_DIR", dir)
        .env("WEIGHTCAST_MODEL", dir.join("model.onnx"))
        .env("WEIGHTCAST_VERSION", version)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CommandError::CannotRun(format!("cannot run '{cmd}': {e}")))?;
    let status = match deadline {
        None => child.status().await,
        Some(limit) => {
            let timeout = async {
                smol::Timer::after(limit).await;
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline"))
            };
            smol::future::or(child.status(), timeout).await
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            let _ = child.kill();
            return Err(CommandError::Failed(format!("no answer in {}s", limit_secs(deadline))));
        }
        Err(e) => return Err(CommandError::CannotRun(format!("cannot run '{cmd}': {e}"))),
    };
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code @ (126 | 127)), _) => Err(CommandError::CannotRun(format!(
            "'{cmd}' exited with {code}: the shell could not {} it",
            if code == 127 { "find" } else { "execute" }
        ))),
        (Some(code), _) => Err(CommandError::Failed(format!("exit {code}"))),
        (None, Some(signal)) => Err(CommandError::Failed(format!("killed by signal {signal}"))),
        (None, None) => Err(CommandError::Failed(format!("ended with {status}"))),
    }
}

fn limit_secs(deadline: Option<Duration>) -> u64 {
    deadline.map_or(0, |d| d.as_secs().max(1))
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Failed(why) | CommandError::CannotRun(why) => f.write_str(why),
        }
    }
}
