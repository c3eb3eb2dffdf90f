//! The `weightcast` command: parses the command line and dispatches; each
//! command lives in its own file, the work in the library.

use std::process::ExitCode;

use clap::Parser;

/// Prints a line on stdout. A reader that went away (`weightcast diff A B |
/// head`) ends the command quietly with exit 0, as `inspect`'s output does,
/// where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("weightcast: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

mod cli;
mod client;
mod folder;
mod inspect;
mod keys;
mod process;
mod pull;
mod push;
mod rollout;
mod serve;

use cli::{Cli, Command};

/// The exit code of a command line weightcast cannot parse (sysexits'
/// EX_USAGE): apart from `pull --once`'s 2, "rejected by --check".
const USAGE_ERROR: u8 = 64;

fn main() -> ExitCode {
    process::return_large_buffers();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { USAGE_ERROR } else { 0 });
        }
    };
    process::init_logs(cli.verbose, &cli.log_format);
    let result = match cli.command {
        Command::Serve { config, listen, runtime, ort_lib, models } => {
            serve::serve(config, listen, runtime, ort_lib, models)
        }
        Command::Inspect { model } => inspect::inspect(&model),
        Command::Pull(args) => return pull::pull(*args),
        Command::Push(args) => push::push(args),
        Command::Rollout { action, model, state_dir, json } => {
            rollout::rollout(&action, &model, state_dir.as_deref(), json)
        }
        Command::Rollback { dest, exec } => folder::rollback(&dest, exec.as_deref()),
        Command::Status { dest, json } => folder::status(&dest, json),
        Command::Retry { dest, version } => folder::retry(&dest, &version),
        Command::Demo { out } => {
            weightcast::demo::write(&out).map_err(|e| format!("cannot write {}: {e}", out.display()))
        }
        Command::Keygen { prefix } => keys::keygen(&prefix),
        Command::Diff { a, b, json } => inspect::diff(&a, &b, json),
        Command::Verify { dest, trust } => folder::verify(&dest, &trust),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weightcast: {e}");
            ExitCode::FAILURE
        }
    }
}
