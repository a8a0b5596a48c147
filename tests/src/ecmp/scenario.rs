//! The steps, run in one [`Mode`] on a fresh [`Topology`], with per-step counts of broken connections.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use super::node::{NodeConfig, PadisNode};
use super::stream::{BackendServer, BreakReason, Fleet, StreamConfig};
use super::topo::{node_addr, Topology};
use super::EcmpError;

/// How the Padis nodes balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Padis as meant to run: Maglev (the same table on every node), the per-node connection table, and
    /// `[l4.sync]` connection-table synchronisation among the nodes.
    Padis,
    /// Maglev and the per-node connection table without sync (shows what sync adds).
    MaglevOnly,
    /// The control case: `[l4] scheduler = "naive"` (a per-node random table, no consistent hashing), no sync.
    Naive,
}

/// UDP port of `[l4.sync]` on every node.
pub const SYNC_PORT: u16 = 7400;

impl Mode {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Padis => "padis",
            Mode::MaglevOnly => "maglev-only",
            Mode::Naive => "naive",
        }
    }

    fn l4_extra(self, node: usize) -> String {
        let id = format!("node_id = \"node{}\"\n", node + 1);
        match self {
            Mode::Padis | Mode::MaglevOnly => id,
            Mode::Naive => format!("{id}scheduler = \"naive\"\n"),
        }
    }

    fn sections(self, node: usize, nodes: usize, key_file: &std::path::Path) -> String {
        match self {
            Mode::Padis => {
                let peers: Vec<String> = (0..nodes).map(|i| format!("\"{}:{SYNC_PORT}\"", node_addr(i))).collect();
                format!(
                    "\n[l4.sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [{}]\nkey_file = \"{}\"\n",
                    node_addr(node),
                    peers.join(", "),
                    key_file.display()
                )
            }
            Mode::MaglevOnly | Mode::Naive => String::new(),
        }
    }
}

/// One step of the proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A node joins (its daemon starts and announces the VIP): ECMP re-spreads the flows.
    AddNode,
    /// The newest node leaves gracefully (SIGTERM: GRACEFUL_SHUTDOWN community, wait, withdraw, detach).
    DrainNode,
    /// The newest node dies (link cut and daemon SIGKILLed at once): the router finds out by the hold timer.
    KillNode,
    /// Backends grow from the plan's `small` to `large` count on every node.
    GrowBackends,
    /// Backends shrink from `large` to `small`; the removed instances stop (their connections may break).
    ShrinkBackends,
    /// A node joins and the backends grow at the same time.
    AddNodeAndGrow,
}

impl Step {
    /// Short label for reports.
    pub fn label(self) -> &'static str {
        match self {
            Step::AddNode => "add node",
            Step::DrainNode => "drain node (SIGTERM)",
            Step::KillNode => "kill node (link cut + SIGKILL)",
            Step::GrowBackends => "grow backends",
            Step::ShrinkBackends => "shrink backends",
            Step::AddNodeAndGrow => "add node + grow backends",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Long-lived client connections.
    pub conns: usize,
    /// Nodes running at the start.
    pub start_nodes: usize,
    /// Node namespaces (the most nodes running at once).
    pub max_nodes: usize,
    /// Backends at the start (and after a shrink).
    pub small: usize,
    /// Backends after a grow.
    pub large: usize,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Traffic shape.
    pub stream: StreamConfig,
    /// BFD interval on both sides of every node's BGP session (Detect Mult [`super::topo::BFD_MULTIPLIER`]).
    pub bfd_interval_ms: u32,
}

impl Plan {
    /// The CI size: a few hundred connections, 2 -> 3 nodes, 10 -> 20 backends; a node joins, drains, then joins
    /// again while the backends grow.
    pub fn ci() -> Plan {
        Plan {
            conns: 300,
            start_nodes: 2,
            max_nodes: 3,
            small: 10,
            large: 20,
            steps: vec![Step::AddNode, Step::DrainNode, Step::AddNodeAndGrow],
            // No node dies in this plan: timers that a loaded CI machine cannot trip (0.9 s detection).
            bfd_interval_ms: 300,
            stream: StreamConfig {
                interval: Duration::from_millis(200),
                stall: Duration::from_secs(20),
                open_parallel: 64,
            },
        }
    }

    /// The benchmark: `conns` connections and every step of the issue.
    pub fn full(conns: usize) -> Plan {
        Plan {
            conns,
            steps: vec![
                Step::AddNode,
                Step::DrainNode,
                Step::AddNode,
                Step::KillNode,
                Step::GrowBackends,
                Step::ShrinkBackends,
                Step::AddNodeAndGrow,
            ],
            stream: StreamConfig {
                interval: Duration::from_millis(500),
                stall: Duration::from_secs(20),
                open_parallel: 128,
            },
            // The kill step measures convergence: 0.3 s detection.
            bfd_interval_ms: 100,
            ..Plan::ci()
        }
    }
}

/// The outcome of one step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// Unbroken connections when it started.
    pub conns: usize,
    /// Connections broken during the step.
    pub broken: usize,
    /// Connections (alive at the start) whose own backend the step removed: the breaks the issue allows.
    pub allowed: usize,
    /// Broken connections whose backend still exists: what the issue says must be zero.
    pub unexpected: usize,
    /// Breaks by reason.
    pub reasons: BTreeMap<BreakReason, usize>,
    /// Router convergence (kill: until the dead node left the ECMP route).
    pub converge: Option<Duration>,
    /// Nodes running after the step.
    pub nodes: Vec<usize>,
    /// Backends in use after the step.
    pub backends: usize,
}

/// The outcome of a [`Plan`] in one [`Mode`].
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The mode.
    pub mode: Mode,
    /// Connections opened.
    pub conns: usize,
    /// Connections per backend id at the start (spread check).
    pub spread: BTreeMap<u32, usize>,
    /// Packets each starting node forwarded while the connections opened (ECMP spread check).
    pub forwarded: Vec<u64>,
    /// Per step.
    pub steps: Vec<StepReport>,
}

impl RunReport {
    /// Total broken connections over every step.
    pub fn broken(&self) -> usize {
        self.steps.iter().map(|s| s.broken).sum()
    }

    /// Total allowed breaks over every step.
    pub fn allowed(&self) -> usize {
        self.steps.iter().map(|s| s.allowed).sum()
    }

    /// Total unexpected breaks over every step.
    pub fn unexpected(&self) -> usize {
        self.steps.iter().map(|s| s.unexpected).sum()
    }

    /// The report of the first `step` of that kind.
    pub fn step(&self, step: Step) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// Router convergence after the node kill, if the plan had one.
    pub fn converge(&self) -> Option<Duration> {
        self.steps.iter().find_map(|s| s.converge)
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mode={} conns={} per-backend={:?} forwarded-per-node={:?}",
            self.mode.name(),
            self.conns,
            self.spread.values().collect::<Vec<_>>(),
            self.forwarded
        )?;
        writeln!(
            f,
            "  {:<32} {:>6} {:>7} {:>8} {:>11}  nodes  backends  reasons",
            "step", "alive", "broken", "allowed", "unexpected"
        )?;
        for s in &self.steps {
            let conv = s.converge.map(|d| format!(" converge={}ms", d.as_millis())).unwrap_or_default();
            writeln!(
                f,
                "  {:<32} {:>6} {:>7} {:>8} {:>11}  {:<5}  {:>8}  {:?}{conv}",
                s.step.label(),
                s.conns,
                s.broken,
                s.allowed,
                s.unexpected,
                s.nodes.iter().map(|n| (n + 1).to_string()).collect::<Vec<_>>().join(","),
                s.backends,
                s.reasons
            )?;
        }
        write!(f, "  total broken={} allowed={} unexpected={}", self.broken(), self.allowed(), self.unexpected())
    }
}

/// Generous bounds: the machine may be loaded by other tests.
const ROUTE_LIMIT: Duration = Duration::from_secs(40);
const TABLE_LIMIT: Duration = Duration::from_secs(30);

struct Lab<'a> {
    plan: &'a Plan,
    mode: Mode,
    rt: tokio::runtime::Handle,
    topo: Topology,
    nodes: Vec<Option<PadisNode>>,
    servers: Vec<Option<BackendServer>>,
    active: Vec<usize>,
    key_file: std::path::PathBuf,
}

impl Lab<'_> {
    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    fn config(&self, index: usize, instance: String) -> NodeConfig {
        NodeConfig {
            index,
            instance,
            backends: self.active.clone(),
            backend_macs: self.topo.backend_macs.clone(),
            l4_extra: self.mode.l4_extra(index),
            sections: self.mode.sections(index, self.plan.max_nodes, &self.key_file),
            bfd_interval_ms: self.plan.bfd_interval_ms,
        }
    }

    fn start_node(&mut self, i: usize) -> Result<(), EcmpError> {
        self.topo.plug(i)?;
        let cfg = self.config(i, PadisNode::new_instance());
        let node = PadisNode::start(&self.topo.nodes[i], self.topo.dir.path(), &cfg)?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    fn free_slot(&self) -> Result<usize, EcmpError> {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_none())
            .ok_or_else(|| EcmpError::Setup("no free node slot (raise max_nodes)".into()))
    }

    fn newest(&self) -> Result<usize, EcmpError> {
        self.running().pop().ok_or_else(|| EcmpError::Setup("no node running".into()))
    }

    fn start_backends(&mut self, range: std::ops::Range<usize>) -> Result<(), EcmpError> {
        for b in range {
            let id = u32::try_from(b).map_err(|e| EcmpError::Setup(e.to_string()))?;
            self.servers[b] = Some(BackendServer::start(&self.rt, &self.topo.backends[b], id)?);
        }
        Ok(())
    }

    /// Sets the active backends on every running node (SIGHUP) and waits until every table has them.
    fn set_backends(&mut self, active: Vec<usize>) -> Result<(), EcmpError> {
        self.active = active;
        for i in self.running() {
            let cfg = self.config(i, self.nodes[i].as_ref().map(|n| n.instance().to_string()).unwrap_or_default());
            if let Some(n) = &self.nodes[i] {
                n.reconfigure(&cfg)?;
            }
        }
        self.wait_tables()
    }

    fn wait_tables(&mut self) -> Result<(), EcmpError> {
        for i in self.running() {
            let active = self.active.clone();
            if let Some(n) = self.nodes[i].as_mut() {
                n.wait_backends(&self.topo.nodes[i], &active, TABLE_LIMIT)?;
            }
        }
        Ok(())
    }

    fn forwarded(&self, i: usize) -> u64 {
        self.nodes[i].as_ref().and_then(|n| n.forwarded(&self.topo.nodes[i]).ok()).unwrap_or(0)
    }

    /// Runs one step; returns the backends it removed and the router convergence it measured.
    fn step(&mut self, step: Step) -> Result<(Vec<u32>, Option<Duration>), EcmpError> {
        let (small, large) = (self.plan.small, self.plan.large);
        match step {
            Step::AddNode => {
                let i = self.free_slot()?;
                self.start_node(i)?;
                self.topo.wait_nexthops(&self.running(), ROUTE_LIMIT)?;
            }
            Step::DrainNode => {
                let i = self.newest()?;
                let node = self.nodes[i].take().ok_or_else(|| EcmpError::Setup("node vanished".into()))?;
                node.signal(libc::SIGTERM);
                self.topo.wait_nexthops(&self.running(), ROUTE_LIMIT)?;
                node.wait_exit(Duration::from_secs(30))?;
            }
            Step::KillNode => {
                let i = self.newest()?;
                let node = self.nodes[i].take().ok_or_else(|| EcmpError::Setup("node vanished".into()))?;
                let t0 = Instant::now();
                self.topo.unplug(i)?;
                node.kill();
                let t1 = self.topo.wait_nexthops(&self.running(), ROUTE_LIMIT)?;
                return Ok((Vec::new(), Some(t1 - t0)));
            }
            Step::GrowBackends => {
                self.start_backends(small..large)?;
                self.set_backends((0..large).collect())?;
            }
            Step::ShrinkBackends => {
                self.set_backends((0..small).collect())?;
                for b in small..large {
                    self.servers[b] = None;
                }
                return Ok(((small..large).filter_map(|b| u32::try_from(b).ok()).collect(), None));
            }
            Step::AddNodeAndGrow => {
                self.start_backends(small..large)?;
                self.active = (0..large).collect();
                let i = self.free_slot()?;
                // Existing nodes switch tables (SIGHUP) and the new node starts with the new set right after.
                for j in self.running() {
                    let cfg =
                        self.config(j, self.nodes[j].as_ref().map(|n| n.instance().to_string()).unwrap_or_default());
                    if let Some(n) = &self.nodes[j] {
                        n.reconfigure(&cfg)?;
                    }
                }
                self.start_node(i)?;
                self.wait_tables()?;
                self.topo.wait_nexthops(&self.running(), ROUTE_LIMIT)?;
            }
        }
        Ok((Vec::new(), None))
    }
}

/// Builds a fresh topology, runs `plan` in `mode`, and tears everything down.
pub fn run(mode: Mode, plan: &Plan) -> Result<RunReport, EcmpError> {
    if plan.small == 0 || plan.large < plan.small || plan.start_nodes == 0 || plan.start_nodes > plan.max_nodes {
        return Err(EcmpError::Setup(format!("inconsistent plan {plan:?}")));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EcmpError::io("tokio runtime", e))?;
    let topo = Topology::new(plan.max_nodes, plan.large, plan.bfd_interval_ms)?;
    let key_file = topo.dir.path().join("sync.key");
    std::fs::write(&key_file, format!("ecmp-test-key-{}\n", crate::netns::unique_name("k")))
        .map_err(|e| EcmpError::io("write sync key", e))?;
    let mut lab = Lab {
        key_file,
        plan,
        mode,
        rt: rt.handle().clone(),
        nodes: (0..plan.max_nodes).map(|_| None).collect(),
        servers: (0..plan.large).map(|_| None).collect(),
        active: (0..plan.small).collect(),
        topo,
    };
    let report = drive(&mut lab);
    // Teardown order: clients and servers stop, daemons die, then the namespaces go (Lab's fields drop).
    for n in lab.nodes.iter_mut() {
        n.take();
    }
    lab.servers.clear();
    drop(lab);
    rt.shutdown_timeout(Duration::from_secs(5));
    report
}

fn drive(lab: &mut Lab<'_>) -> Result<RunReport, EcmpError> {
    let plan = lab.plan;
    lab.start_backends(0..plan.small)?;
    for i in 0..plan.start_nodes {
        lab.start_node(i)?;
    }
    lab.wait_tables()?;
    lab.topo
        .wait_nexthops(&lab.running(), ROUTE_LIMIT)
        .map_err(|e| EcmpError::Setup(format!("{e}; BIRD log:\n{}", lab.topo.bird_log())))?;
    let mut fleet = Fleet::open(&lab.rt, &lab.topo.client, plan.conns, plan.stream)?;
    let settle = plan.stream.stall + Duration::from_secs(30);
    fleet.wait_progress(&fleet.rounds(), 2, settle)?;
    let setup_breaks = fleet.broken_in(0);
    if !setup_breaks.is_empty() {
        return Err(EcmpError::Setup(format!(
            "{} connections broke before any step: {setup_breaks:?}",
            setup_breaks.len()
        )));
    }
    let forwarded = lab.running().into_iter().map(|i| lab.forwarded(i)).collect();
    let mut report =
        RunReport { mode: lab.mode, conns: plan.conns, spread: fleet.per_backend(), forwarded, steps: Vec::new() };
    for (k, &step) in plan.steps.iter().enumerate() {
        let id = k + 1;
        // Clients come and go: a third of the connections are renewed (and broken ones replaced) on the
        // backend set of the moment, so every step starts with `conns` streaming connections.
        fleet.renew(&lab.rt, &lab.topo.client, plan.conns / 3, plan.conns)?;
        fleet.wait_progress(&fleet.rounds(), 2, settle)?;
        fleet.set_step(id);
        let before = fleet.alive();
        let (removed, converge) = lab.step(step)?;
        fleet.wait_progress(&fleet.rounds(), 3, settle)?;
        let broken = fleet.broken_in(id);
        let mut reasons = BTreeMap::new();
        for (_, _, b) in &broken {
            *reasons.entry(b.reason).or_insert(0) += 1;
        }
        report.steps.push(StepReport {
            step,
            conns: before.len(),
            broken: broken.len(),
            allowed: before.iter().filter(|(_, b)| removed.contains(b)).count(),
            unexpected: broken.iter().filter(|(_, b, _)| !removed.contains(b)).count(),
            reasons,
            converge,
            nodes: lab.running(),
            backends: lab.active.len(),
        });
        tracing::info!(step = step.label(), node_addrs = ?lab.running().iter().map(|&i| node_addr(i)).collect::<Vec<_>>(), "step done");
    }
    fleet.stop();
    Ok(report)
}
