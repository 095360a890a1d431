//! Run directories of local control planes, and the clean-up of runs whose owner died.
//!
//! Every run gets a directory under the state root holding an `owner` file (pid and start time of
//! the process that started it) and a `pids` file (one line per child: pid, start time, name).
//! A run whose owner is no longer alive is stale: its recorded children that are still alive —
//! the same pid *and* the same start time — are killed, and the directory is removed. Nothing is
//! ever killed by process name.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where run directories live: `$CONNECTOR_OPERATOR_STATE`, else `<tmp>/connector-operator-local`.
pub fn state_root() -> PathBuf {
    std::env::var_os("CONNECTOR_OPERATOR_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("connector-operator-local"))
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: parse after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start_time` and has not exited. A zombie
/// (exited, not yet reaped — common when its parent died in a container without an init that
/// reaps) counts as exited.
fn is_same_process_alive(pid: u32, start_time: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = after_name.split_whitespace();
    let exited = matches!(fields.next(), Some("Z" | "X"));
    !exited && fields.nth(18).and_then(|f| f.parse().ok()) == Some(start_time)
}

/// Creates a fresh run directory owned by this process.
pub fn new_run_dir(prefix: &str) -> io::Result<PathBuf> {
    let root = state_root();
    fs::create_dir_all(&root)?;
    clean_stale_runs(&root);
    let pid = std::process::id();
    let dir = tempfile::Builder::new().prefix(&format!("{prefix}-{pid}-")).tempdir_in(&root)?.keep();
    let start = process_start_time(pid).unwrap_or_default();
    fs::write(dir.join("owner"), format!("{pid} {start}\n"))?;
    Ok(dir)
}

/// Kills the children of runs whose owner has died and removes their directories. Returns how
/// many processes were killed.
pub fn clean_stale_runs(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
            continue;
        };
        let mut fields = owner.split_whitespace().filter_map(|f| f.parse::<u64>().ok());
        let (Some(owner_pid), Some(owner_start)) = (fields.next(), fields.next()) else {
            continue;
        };
        let owner_alive = u32::try_from(owner_pid).is_ok_and(|pid| is_same_process_alive(pid, owner_start));
        if owner_alive {
            continue;
        }
        killed += kill_recorded_children(&dir.join("pids"));
        let _ = fs::remove_dir_all(&dir);
    }
    killed
}

/// Kills every process listed in a pid file that is still the same process. Returns the count.
pub fn kill_recorded_children(pid_file: &Path) -> usize {
    let Ok(pids) = fs::read_to_string(pid_file) else {
        return 0;
    };
    let mut killed = 0;
    for line in pids.lines() {
        let mut fields = line.split_whitespace();
        let (Some(Ok(pid)), Some(Ok(start))) =
            (fields.next().map(str::parse::<u32>), fields.next().map(str::parse::<u64>))
        else {
            continue;
        };
        if is_same_process_alive(pid, start) && kill_pid(pid) {
            killed += 1;
        }
    }
    killed
}

fn kill_pid(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions; the caller checked pid and start time.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_time() {
        let start = process_start_time(std::process::id());
        assert!(start.is_some_and(|t| t > 0));
    }

    #[test]
    fn stale_run_children_are_killed_and_live_runs_kept() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        // A stale run: its owner (pid 1 with a start time that is not init's) is not alive.
        let stale = root.path().join("stale");
        fs::create_dir(&stale)?;
        fs::write(stale.join("owner"), "1 1\n")?;
        let mut sleeper = std::process::Command::new("sleep").arg("60").spawn()?;
        let start = process_start_time(sleeper.id()).ok_or("no start time")?;
        fs::write(stale.join("pids"), format!("{} {start} sleep\n", sleeper.id()))?;
        // A live run owned by this process.
        let live = root.path().join("live");
        fs::create_dir(&live)?;
        let me = std::process::id();
        fs::write(live.join("owner"), format!("{me} {}\n", process_start_time(me).ok_or("no start")?))?;

        assert_eq!(clean_stale_runs(root.path()), 1);
        let status = sleeper.wait()?;
        assert!(!status.success(), "the recorded child was killed");
        assert!(!stale.exists());
        assert!(live.exists());
        Ok(())
    }

    #[test]
    fn a_reused_pid_is_not_killed() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let stale = root.path().join("stale");
        fs::create_dir(&stale)?;
        fs::write(stale.join("owner"), "1 1\n")?;
        let mut sleeper = std::process::Command::new("sleep").arg("60").spawn()?;
        // Same pid, different start time: a different process that happens to reuse the pid.
        fs::write(stale.join("pids"), format!("{} 1 sleep\n", sleeper.id()))?;
        assert_eq!(clean_stale_runs(root.path()), 0);
        assert!(sleeper.try_wait()?.is_none(), "an unrelated process must survive");
        sleeper.kill()?;
        sleeper.wait()?;
        Ok(())
    }
}
