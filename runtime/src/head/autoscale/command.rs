//! Node jobs through any command: how `kubectl scale`, a cloud CLI or a
//! script of your own plugs into the autoscaler. The commands run with
//! `sh -c`; `{job}`, `{node}`, `{address}` and `{count}` are replaced, and
//! `FLEET_NODE_JOB`, `FLEET_ADDRESS` and `FLEET_TOKEN` are set, so a node
//! started from the command carries its job id to the head.

use std::collections::HashMap;
use std::process::Command as Process;

use super::process::{fill, run, Output};
use super::{Launch, NodeJob, Phase, Provider};

/// The command provider.
pub(super) struct Command {
    scale_up: String,
    scale_down: String,
    launch: Launch,
}

impl Command {
    pub(super) fn new(scale_up: String, scale_down: String, launch: Launch) -> crate::Result<Self> {
        if scale_up.trim().is_empty() || scale_down.trim().is_empty() {
            return Err(crate::Error::Startup(
                "--autoscale command needs --scale-up 'CMD' and --scale-down 'CMD {node}'".into(),
            ));
        }
        Ok(Command {
            scale_up,
            scale_down,
            launch,
        })
    }

    fn shell(&self, template: &str, job: &str, node: &str, count: usize) -> Process {
        let count = count.to_string();
        let line = fill(
            template,
            &[
                ("job", job),
                ("node", node),
                ("address", &self.launch.address),
                ("count", &count),
            ],
        );
        let mut p = Process::new("sh");
        p.arg("-c")
            .arg(line)
            .env("FLEET_NODE_JOB", job)
            .env(crate::ENV_ADDRESS, &self.launch.address)
            .env(crate::ENV_TOKEN, &self.launch.token)
            .env("FLEET_BIN", &self.launch.fleet_bin);
        p
    }
}

impl Provider for Command {
    fn name(&self) -> &'static str {
        "command"
    }

    fn submit(&mut self, id: &str, count: usize) -> Result<String, String> {
        let mut p = self.shell(&self.scale_up, id, "", count);
        // Output goes to the head's log; a node started in the background
        // may keep it open, so nothing here waits for it to close.
        run(&mut p, None, Output::Log, "the --scale-up command")?;
        Ok(String::new())
    }

    fn poll(&mut self) -> Option<HashMap<String, Phase>> {
        None
    }

    fn cancel(&mut self, job: &NodeJob, count: usize) -> Result<(), String> {
        let Some(node) = &job.node else {
            // Nothing joined that could be named; the command cannot be
            // told which node to stop.
            return Ok(());
        };
        let mut p = self.shell(&self.scale_down, &job.id, node, count);
        run(&mut p, None, Output::Log, "the --scale-down command").map(|_| ())
    }
}
