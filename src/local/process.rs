//! Child processes that cannot outlive the process that started them.
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`. Linux delivers that signal when the *thread* that
//! forked the child exits, so all children are forked by one spawner thread that lives as long as
//! the process: when the process ends — normally, by a panic, or by SIGKILL — its children end too.
//! Each child is also recorded in a pid file so that a later run can clean up after a machine-level
//! accident (see [`super::state`]).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // The thread never returns: its exit would kill every child through PDEATHSIG.
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    set_parent_death_signal(&mut command);
                    let _ = reply.send(command.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|err| tracing::error!(%err, "cannot start the child-spawner thread"));
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only prctl and getppid, which are
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

/// A child process started by [`spawn`]. Dropping it kills the process.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Child,
}

impl ManagedChild {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's standard output, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The name given at spawn time (used in messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process has exited, and how.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the process, if it is still running.
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(io::Error::other)?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) with a pid we own and have not reaped yet (try_wait above returned None),
        // so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// SIGKILL, then wait for the exit.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Starts `command` as a child that dies with this process, and appends its pid (with its start
/// time, so a reused pid is never mistaken for it) to `pid_file`.
pub fn spawn(name: &str, command: Command, pid_file: &Path) -> io::Result<ManagedChild> {
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("child-spawner lock poisoned"))?
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    let child = reply_rx.recv().map_err(|_| io::Error::other("child-spawner thread is gone"))??;
    let pid = child.id();
    let managed = ManagedChild { name: name.to_owned(), child };
    let start = super::state::process_start_time(pid).unwrap_or_default();
    let mut file = OpenOptions::new().create(true).append(true).open(pid_file)?;
    writeln!(file, "{pid} {start} {name}")?;
    Ok(managed)
}
