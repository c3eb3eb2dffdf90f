//! `weightcast rollout`: a model's staged rollout, seen and steered from the
//! hub's own machine through its state folder (no remote write API).

use std::path::Path;

use weightcast::fleet::db::{Command, Db};

pub(crate) fn rollout(action: &str, model: &str, state_dir: Option<&Path>, json: bool) -> Result<(), String> {
    let dir = match state_dir {
        Some(d) => d.to_path_buf(),
        None => weightcast::config::Config::default()
            .state_folder()
            .ok_or("no state folder to default to (no $HOME): give --state-dir")?,
    };
    if !dir.join(weightcast::fleet::db::FILE).exists() {
        return Err(format!(
            "{} holds no fleet table: give the hub's state folder (state_dir in its config) with --state-dir",
            dir.display()
        ));
    }
    let db = Db::open(&dir).map_err(|e| format!("cannot open the fleet table in {}: {e}", dir.display()))?;
    let rollout = db.rollouts().map_err(|e| e.to_string())?.into_iter().find(|(m, _)| m == model).map(|(_, r)| r);
    let Some(command) = Command::parse(action) else {
        return status(&db, model, rollout.as_ref(), json);
    };
    if rollout.is_none() {
        return Err(format!("model '{model}' has no rollout under way (`weightcast rollout status {model}`)"));
    }
    db.command(model, command).map_err(|e| e.to_string())?;
    // The hub takes commands once a second: say whether it did.
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let left = db.pending(model).map_err(|e| e.to_string())?;
        if left == 0 {
            say!("{model}: {action} taken by the hub");
            return Ok(());
        }
    }
    say!(
        "{model}: {action} left for the hub (is it running with this state folder?); it applies when the hub takes it"
    );
    Ok(())
}

fn status(db: &Db, model: &str, rollout: Option<&weightcast::fleet::Rollout>, json: bool) -> Result<(), String> {
    let stable = db.stable(model).map_err(|e| e.to_string())?;
    let devices: Vec<_> =
        db.devices().map_err(|e| e.to_string())?.into_iter().filter(|(m, _)| m == model).map(|(_, d)| d).collect();
    if json {
        let v = serde_json::json!({"model": model, "stable": stable, "rollout": rollout, "devices": devices.len()});
        say!("{v}");
        return Ok(());
    }
    let short = |v: &str| weightcast::wire::short(v).to_string();
    say!("model     {model}");
    say!("stable    {}", stable.as_deref().map_or("(none yet)".into(), short));
    say!("devices   {}", devices.len());
    let Some(r) = rollout else {
        say!("rollout   none under way");
        return Ok(());
    };
    let committed = r.admitted.values().filter(|a| a.committed_ms.is_some()).count();
    say!("rollout   {} → {}: {:?}, stage {}", short(&r.stable), short(&r.candidate), r.status, r.stage + 1);
    say!(
        "          {} offered the new version, {committed} committed it, {} failed it",
        r.admitted.len(),
        r.failed.len()
    );
    if let Some(why) = &r.halted_reason {
        say!("halted    {why}");
    }
    Ok(())
}
