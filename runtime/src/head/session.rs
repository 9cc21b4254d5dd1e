//! Sessions: admitting a driver, worker or node agent, and serving its
//! stream of operations until it ends.

use super::*;

impl Head {
    /// Opens a session for a client in this process: plain channels, no
    /// encoding.
    pub(crate) fn local_session(
        self: &Arc<Self>,
    ) -> (
        UnboundedSender<proto::ClientOp>,
        UnboundedReceiver<proto::HeadOp>,
    ) {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (htx, hrx) = mpsc::unbounded_channel();
        let inbound = crate::client::transport::batches(crx).map(Ok);
        tokio::spawn(self.clone().run_session(Box::pin(inbound), htx, true));
        (ctx, hrx)
    }

    /// Checks a hello; returns the job the session belongs to.
    fn admit(&self, hello: &proto::Hello, client: u32, local: bool) -> Result<u32, String> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not the head's version {PROTOCOL_VERSION}",
                hello.protocol_version
            ));
        }
        if hello.token != self.token {
            return Err(crate::discovery::wrong_token(self.token_file.as_deref()));
        }
        let mut st = self.state.lock();
        match hello.role() {
            Role::Driver if local => {
                if let Some(job) = st.jobs.get_mut(&EMBEDDED_JOB) {
                    job.driver = Some(client);
                }
                Ok(EMBEDDED_JOB)
            }
            Role::Driver => {
                let Some(path) = self.binary_path(&hello.binary_hash) else {
                    return Err(
                        "a driver joining over the network must upload its executable".into(),
                    );
                };
                if !path.is_file() {
                    return Err(format!("executable {} was not uploaded", hello.binary_hash));
                }
                st.add_job(
                    client,
                    Some(client),
                    Some(hello.binary_hash.clone()),
                    hello.registry_hash.clone(),
                    0,
                );
                self.jobs.driver_joined(client, &hello.submission);
                Ok(client)
            }
            Role::Worker => match st.jobs.get(&hello.job) {
                None => Err(format!("job {} has ended", hello.job)),
                Some(job) if job.registry != hello.registry_hash => Err(format!(
                    "worker build {} does not match the driver's build {}",
                    hello.registry_hash, job.registry
                )),
                Some(_) if !st.nodes.contains_key(&hello.node) => {
                    Err(format!("unknown node {}", hello.node))
                }
                Some(_) => Ok(hello.job),
            },
            Role::Node => match &hello.node_info {
                Some(info) if !info.address.is_empty() => {
                    st.admit_node(client, info)?;
                    Ok(EMBEDDED_JOB)
                }
                _ => Err("a node must say what it brings".into()),
            },
            Role::Unspecified => Err("hello without a role".into()),
        }
    }

    fn welcome(&self, client: u32, hello: &proto::Hello) -> proto::HeadOp {
        let st = self.state.lock();
        let node = match hello.role() {
            Role::Worker => st.nodes.get(&hello.node),
            _ => st.nodes.get(&self.node),
        };
        let info = node.map(|n| n.info.clone()).unwrap_or_default();
        // A driver picks the store of its own machine among these.
        let stores = match hello.role() {
            Role::Driver => st
                .nodes
                .values()
                .filter(|n| n.alive)
                .map(|n| n.info.clone())
                .collect(),
            _ => Vec::new(),
        };
        proto::HeadOp {
            op: Some(head_op::Op::Welcome(Box::new(proto::Welcome {
                client_id: client,
                store_dir: info.store_dir,
                node: info.address,
                spill_dir: info.spill_dir,
                store_capacity: info.store_capacity,
                stores,
                max_pending_tasks: match hello.role() {
                    Role::Driver => st.max_pending as u64,
                    _ => 0,
                },
                summary_every_ms: match hello.role() {
                    Role::Worker => st.summary_every_ms,
                    _ => 0,
                },
            }))),
        }
    }

    /// Serves one client session until its stream ends.
    pub(crate) async fn run_session(
        self: Arc<Self>,
        mut inbound: OpStream,
        out: UnboundedSender<proto::HeadOp>,
        local: bool,
    ) {
        let mut first = match inbound.next().await {
            Some(Ok(ops)) => ops.into_iter(),
            _ => return,
        };
        let hello = match first.next().and_then(|o| o.op) {
            Some(Op::Hello(h)) => *h,
            _ => {
                let _ = out.send(refused("the first message must be hello"));
                return;
            }
        };
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        let job = match self.admit(&hello, client, local) {
            Ok(job) => job,
            Err(why) => {
                if hello.role() == Role::Worker && !st_has_job(&self.state, hello.job) {
                    // A worker that started as its job ended: nothing wrong.
                    tracing::debug!(pid = hello.pid, "refused a session: {why}");
                } else {
                    tracing::warn!(pid = hello.pid, "refused a session: {why}");
                }
                let _ = out.send(refused(&why));
                return;
            }
        };
        let _ = out.send(self.welcome(client, &hello));
        self.senders.insert(client, out);
        let role = hello.role();
        {
            let mut st = self.state.lock();
            st.open_session(client, job);
            if role == Role::Worker {
                self.connected_workers.insert(hello.worker_id, ());
                self.start_failures.remove(&hello.job);
                st.worker_connected(client, &hello);
            }
        }
        self.apply(client, first.collect());
        while let Some(Ok(ops)) = inbound.next().await {
            self.apply(client, ops);
        }
        self.senders.remove(&client);
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let out = {
            let mut st = self.state.lock();
            st.close_session(client);
            match role {
                Role::Driver if job != EMBEDDED_JOB => {
                    for w in st.job_ended(job) {
                        // Closing its stream tells the worker to exit.
                        self.senders.remove(&w);
                    }
                }
                Role::Node => {
                    if let Some(name) = hello.node_info.as_ref().map(|i| i.address.clone()) {
                        if st.node_session_ended(&name, client) {
                            self.jobs.node_lost(&name);
                        }
                    }
                }
                _ => {}
            }
            st.dispatch();
            st.take_outbox()
        };
        self.flush(out);
    }
}
