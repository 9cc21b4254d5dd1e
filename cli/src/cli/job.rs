//! `fleet job …`: run a driver on the cluster, detached from this terminal
//! (Ray's `ray job submit`), and look after it: list, status, logs, stop.
//! `submit` prints the job id alone on stdout, so scripts can capture it;
//! everything else it says goes to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use fleet::proto::{self, head_client::HeadClient};
use fleet::{Error, Result};

/// Where a `fleet job` command finds the cluster.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--address` (or `FLEET_ADDRESS`); `None` or `auto`: the head
    /// started on this machine.
    pub address: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
}

/// What `fleet job submit` runs.
#[derive(Clone, Debug)]
pub struct Submit {
    /// The executable (a path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Node to run it on (as `fleet status` names it); `None`: the head's
    /// machine.
    pub node: Option<String>,
    /// Extra environment for the driver, `KEY=VALUE`.
    pub env: Vec<String>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))
}

async fn connect(address: &str) -> Result<HeadClient<tonic::transport::Channel>> {
    Ok(HeadClient::new(fleet::daemon::channel(address).await?))
}

fn rpc_error(what: &str, s: tonic::Status) -> Error {
    Error::Connection(format!("{what}: {}", s.message()))
}

/// The executable `program` names: a path, or a bare name found in `PATH`.
fn find_program(program: &Path) -> Result<PathBuf> {
    if program.components().count() == 1 && !program.is_file() {
        if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        }) {
            return Ok(found);
        }
    }
    if !program.is_file() {
        return Err(Error::Usage(format!(
            "no executable at {}: give the path of the program to run after `--`, e.g. \
             `fleet job submit -- ./my_app args…`",
            program.display()
        )));
    }
    Ok(program.to_path_buf())
}

/// `fleet job submit`: uploads the executable (once per content hash) and
/// starts it as a driver on the cluster; returns the job's id.
pub fn submit(target: &Target, job: Submit) -> Result<String> {
    if let Some(bad) = job.env.iter().find(|kv| !kv.contains('=')) {
        return Err(Error::Usage(format!("--env {bad}: give KEY=VALUE")));
    }
    let (address, token) = super::target(target.address.as_deref(), target.token_file.as_deref())?;
    let path = find_program(&job.program)?;
    let hash = fleet::daemon::executable_hash(&path)?;
    let rt = runtime()?;
    let info = rt.block_on(async {
        fleet::daemon::upload_executable(
            address.clone(),
            token.clone(),
            path.clone(),
            hash.clone(),
        )
        .await?;
        connect(&address)
            .await?
            .submit_job(proto::SubmitJobRequest {
                token: token.clone(),
                binary_hash: hash,
                args: job.args,
                env: job.env,
                node: job.node.unwrap_or_default(),
                program: job.program.to_string_lossy().into_owned(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| rpc_error("submitting the job", s))
    })?;
    eprintln!(
        "fleet: job {} {} on {} (cluster {address})\n  output:  fleet job logs {} --follow\n  status:  fleet job status {}\n  stop:    fleet job stop {}",
        info.id,
        info.state.to_lowercase(),
        info.node,
        info.id,
        info.id,
        info.id
    );
    // A driver that started and already ended (even with an error) has
    // its id printed like any other; only one that never ran is an error.
    if info.state == fleet::daemon::jobs::FAILED && info.pid == 0 {
        return Err(Error::Usage(format!(
            "job {} failed to start: {}",
            info.id, info.message
        )));
    }
    Ok(info.id)
}

/// `fleet job list`: every job of the cluster, oldest first.
pub fn list(target: &Target) -> Result<Vec<proto::JobInfo>> {
    let (address, token) = super::target(target.address.as_deref(), target.token_file.as_deref())?;
    runtime()?.block_on(async {
        connect(&address)
            .await?
            .list_jobs(proto::StatusRequest { token })
            .await
            .map(|r| r.into_inner().jobs)
            .map_err(|s| rpc_error("listing jobs", s))
    })
}

/// `fleet job status ID`.
pub fn status(target: &Target, id: &str) -> Result<proto::JobInfo> {
    let (address, token) = super::target(target.address.as_deref(), target.token_file.as_deref())?;
    runtime()?.block_on(get(&address, &token, id))
}

async fn get(address: &str, token: &str, id: &str) -> Result<proto::JobInfo> {
    connect(address)
        .await?
        .get_job(proto::JobRequest {
            token: token.to_string(),
            id: id.to_string(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| rpc_error(&format!("job {id}"), s))
}

/// `fleet job stop ID`: stops the driver and, with `wait`, waits until it
/// has exited; returns its final record.
pub fn stop(target: &Target, id: &str, wait: bool) -> Result<proto::JobInfo> {
    let (address, token) = super::target(target.address.as_deref(), target.token_file.as_deref())?;
    runtime()?.block_on(async {
        let mut info = connect(&address)
            .await?
            .stop_job(proto::JobRequest {
                token: token.clone(),
                id: id.to_string(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| rpc_error(&format!("stopping job {id}"), s))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while wait && !ended(&info.state) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            info = get(&address, &token, id).await?;
        }
        Ok(info)
    })
}

/// Whether a job's state is final.
pub fn ended(state: &str) -> bool {
    state != fleet::daemon::jobs::PENDING && state != fleet::daemon::jobs::RUNNING
}

/// `fleet job logs ID [--follow]`: writes the driver's output to `out`;
/// with `follow`, until the job has ended.
pub fn logs(target: &Target, id: &str, follow: bool, out: &mut dyn Write) -> Result<()> {
    let (address, token) = super::target(target.address.as_deref(), target.token_file.as_deref())?;
    runtime()?.block_on(async {
        let mut stream = connect(&address)
            .await?
            .max_decoding_message_size(fleet::daemon::MAX_MESSAGE)
            .job_logs(proto::JobLogsRequest {
                token,
                id: id.to_string(),
                offset: 0,
                follow,
            })
            .await
            .map_err(|s| rpc_error(&format!("output of job {id}"), s))?
            .into_inner();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| rpc_error(&format!("output of job {id}"), s))?;
            out.write_all(&chunk.data)?;
            out.flush()?;
        }
        Ok(())
    })
}

/// A UTC time from milliseconds since the Unix epoch, `YYYY-MM-DD HH:MM:SS`.
pub fn utc(millis: u64) -> String {
    if millis == 0 {
        return "-".into();
    }
    let secs = millis / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How `fleet job status` prints a job.
pub fn describe(j: &proto::JobInfo) -> String {
    let took = match (j.start_millis, j.end_millis) {
        (0, _) => String::new(),
        (s, 0) => format!(
            "\n  running:    {:.1}s so far",
            (fleet::daemon::jobs::now_millis().saturating_sub(s)) as f64 / 1000.0
        ),
        (s, e) => format!(
            "\n  ran:        {:.1}s",
            e.saturating_sub(s) as f64 / 1000.0
        ),
    };
    let exit = j.exit_code.map_or("-".to_string(), |c| c.to_string());
    format!(
        "job {}\n  state:      {}\n  exit code:  {exit}\n  entrypoint: {}\n  node:       {}\n  pid:        {}\n  submitted:  {} UTC\n  started:    {} UTC\n  ended:      {} UTC{took}\n  message:    {}\n  output:     {}\n",
        j.id,
        j.state,
        std::iter::once(j.program.clone()).chain(j.args.iter().cloned()).collect::<Vec<_>>().join(" "),
        j.node,
        j.pid,
        utc(j.submit_millis),
        utc(j.start_millis),
        utc(j.end_millis),
        j.message,
        j.log_path,
    )
}

/// Jobs as JSON, for scripts (`--json`): the same fields as the
/// dashboard's `/api/jobs`.
pub fn json(jobs: &[proto::JobInfo]) -> String {
    let all: Vec<serde_json::Value> = jobs.iter().map(fleet::daemon::jobs::to_json).collect();
    serde_json::to_string_pretty(&all).unwrap_or_default() + "\n"
}

/// How `fleet job list` prints the jobs: one line each.
pub fn table(jobs: &[proto::JobInfo]) -> String {
    let mut out = format!(
        "{:<13} {:<10} {:>5}  {:<19}  {:<19}  {:<22} ENTRYPOINT\n",
        "ID", "STATE", "EXIT", "STARTED (UTC)", "ENDED (UTC)", "NODE"
    );
    for j in jobs {
        out += &format!(
            "{:<13} {:<10} {:>5}  {:<19}  {:<19}  {:<22} {}\n",
            j.id,
            j.state,
            j.exit_code.map_or("-".to_string(), |c| c.to_string()),
            utc(j.start_millis),
            utc(j.end_millis),
            j.node,
            std::iter::once(j.program.clone())
                .chain(j.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if jobs.is_empty() {
        out += "(no jobs yet: fleet job submit -- ./my_app args…)\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1_000), "1970-01-01 00:00:01");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_083_199_000), "2026-11-30 23:59:59");
    }
}
