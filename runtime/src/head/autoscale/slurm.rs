//! Node jobs as Slurm batch jobs: `sbatch` one node running `fleet start
//! --address <head>`, follow it with `squeue`, give it back with `scancel`.

use std::collections::HashMap;
use std::process::Command;

use super::process::{run, Output};
use super::{Launch, NodeJob, Phase, Provider};

/// The Slurm provider.
pub(super) struct Slurm {
    args: Vec<String>,
    launch: Launch,
}

/// Single-quotes `s` for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Slurm {
    pub(super) fn new(args: Vec<String>, launch: Launch) -> crate::Result<Slurm> {
        for program in ["sbatch", "squeue", "scancel"] {
            let found = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
            });
            if !found {
                return Err(crate::Error::Startup(format!(
                    "--autoscale slurm needs `{program}` on PATH: run the head on a Slurm login node (or install slurm-client)"
                )));
            }
        }
        Ok(Slurm { args, launch })
    }

    /// The batch script of one node job. The token reaches it through the
    /// environment `sbatch` exports (its default, `--export=ALL`), never
    /// through the script or a command line.
    fn script(&self, id: &str) -> String {
        format!(
            "#!/bin/sh\n\
             # A Fleet node job, asked for by the autoscaler of the head at {address}.\n\
             export FLEET_NODE_JOB={id}\n\
             ip=$(sh -c \"${{FLEET_NODE_IP_CMD:-hostname -I | cut -d' ' -f1}}\")\n\
             if [ -z \"$ip\" ]; then echo 'fleet node job: no address from FLEET_NODE_IP_CMD / hostname -I' >&2; exit 1; fi\n\
             exec {bin} start --address {address} --node-ip \"$ip\" --num-cpus \"${{SLURM_CPUS_ON_NODE:-1}}\" --block\n",
            address = quote(&self.launch.address),
            id = quote(id),
            bin = quote(&self.launch.fleet_bin.to_string_lossy()),
        )
    }
}

impl Provider for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&mut self, id: &str, _count: usize) -> Result<String, String> {
        let text = run(
            Command::new("sbatch")
                .args(["--parsable", "--nodes=1", "--job-name=fleet-node"])
                .args(&self.args)
                .env(crate::ENV_TOKEN, &self.launch.token),
            Some(self.script(id)),
            Output::Capture,
            "sbatch",
        )
        .map_err(|e| format!("{e} (check --slurm-args)"))?;
        // `--parsable` prints "jobid" or "jobid;cluster".
        let job = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: {text:?}"));
        }
        Ok(job)
    }

    fn poll(&mut self) -> Option<HashMap<String, Phase>> {
        let out = match run(
            Command::new("squeue").args(["--noheader", "--me", "--format=%i %T"]),
            None,
            Output::Capture,
            "squeue",
        ) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!("autoscaler: {e}");
                return None;
            }
        };
        Some(
            out.lines()
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(id, state)| {
                    let phase = match state.trim() {
                        "PENDING" | "CONFIGURING" | "REQUEUED" | "RESV_DEL_HOLD"
                        | "REQUEUE_HOLD" | "REQUEUE_FED" | "SUSPENDED" => Phase::Pending,
                        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => {
                            Phase::Running
                        }
                        _ => return None,
                    };
                    Some((id.trim().to_string(), phase))
                })
                .collect(),
        )
    }

    fn cancel(&mut self, job: &NodeJob, _count: usize) -> Result<(), String> {
        run(
            Command::new("scancel").arg(&job.external),
            None,
            Output::Capture,
            "scancel",
        )
        .map(|_| ())
    }
}
