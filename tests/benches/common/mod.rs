//! What the benchmark commands share: the platform simulator in a process of its own.

use std::io::BufRead;
use std::process::{Command, Stdio};

use connector_operator::local::{self, LocalControlPlane, ManagedChild};
use connector_operator::sim::SimControl;

/// The simulator binary on a free loopback port, recorded in the control plane's pid file.
/// Returns the process, the platform base URL and a control client.
pub fn start_simulator(plane: &LocalControlPlane) -> (ManagedChild, String, SimControl) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platform-simulator"));
    command.args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut simulator = local::process::spawn("platform-simulator", command, &plane.pid_file()).unwrap();
    let stdout = simulator.take_stdout().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines().map_while(Result::ok);
    let line = lines.by_ref().find(|l| l.contains("listening on")).unwrap();
    // Keep reading: a closed pipe would kill the simulator at its next line of output.
    std::thread::spawn(move || lines.for_each(drop));
    let base_url = line.rsplit(' ').next().unwrap().to_string();
    let control = SimControl::new(base_url.replace("/elements/api-v2", "/_sim")).unwrap();
    (simulator, base_url, control)
}
