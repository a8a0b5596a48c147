//! One BFD session's state machine (RFC 5880 section 6, asynchronous mode, no Echo): the Down/Init/Up three-way
//! handshake, Desired Min TX / Required Min RX negotiation, slow 1 s transmission while not Up, the Poll/Final
//! sequence when our timers change, the detection time, diagnostics and AdminDown. No I/O: the socket task
//! feeds it packets and the time, and sends what it asks for.

use std::time::Duration;

use tokio::time::Instant;

use super::packet::{ControlPacket, Diag, State};

/// RFC 5880 section 6.8.3: while not Up, Desired Min TX is at least one second.
const SLOW_TX: Duration = Duration::from_secs(1);

/// Configured timers of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timers {
    /// Desired Min TX and Required Min RX once Up.
    pub interval: Duration,
    /// Detect Mult.
    pub multiplier: u8,
}

/// A state change, for logs, metrics and the BGP coupling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    /// Previous state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Diagnostic of the change.
    pub diag: Diag,
    /// An Up session went down for a reason other than the remote's AdminDown (RFC 5882 section 3.2): the
    /// client protocol must react.
    pub failure: bool,
}

/// Session variables (RFC 5880 section 6.8.1) and timers.
#[derive(Debug)]
pub(crate) struct Machine {
    timers: Timers,
    state: State,
    remote_state: State,
    local_discr: u32,
    remote_discr: u32,
    diag: Diag,
    remote_diag: Diag,
    /// bfd.DesiredMinTxInterval as advertised now.
    desired_tx: Duration,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_mult: u8,
    remote_demand: bool,
    poll: bool,
    final_due: bool,
    detect_at: Option<Instant>,
    next_tx: Option<Instant>,
    failures: u64,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Machine {
    /// A session in state Down that starts transmitting at once (active role).
    pub(crate) fn new(local_discr: u32, timers: Timers, now: Instant) -> Self {
        Machine {
            timers,
            state: State::Down,
            remote_state: State::Down,
            local_discr,
            remote_discr: 0,
            diag: Diag::None,
            remote_diag: Diag::None,
            desired_tx: timers.interval.max(SLOW_TX),
            // RFC 5880 section 6.8.1: initial bfd.RemoteMinRxInterval is 1 µs.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_mult: 0,
            remote_demand: false,
            poll: false,
            final_due: false,
            detect_at: None,
            next_tx: Some(now),
            failures: 0,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }
    pub(crate) fn remote_state(&self) -> State {
        self.remote_state
    }
    pub(crate) fn diag(&self) -> Diag {
        self.diag
    }
    pub(crate) fn remote_diag(&self) -> Diag {
        self.remote_diag
    }
    pub(crate) fn local_discr(&self) -> u32 {
        self.local_discr
    }
    pub(crate) fn remote_discr(&self) -> u32 {
        self.remote_discr
    }
    /// Up sessions that failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures
    }
    /// Whether a Poll sequence is in progress.
    #[cfg(test)]
    pub(crate) fn polling(&self) -> bool {
        self.poll
    }

    /// The periodic transmission interval: the larger of our Desired Min TX and the remote's Required Min RX.
    pub(crate) fn tx_interval(&self) -> Duration {
        self.desired_tx.max(self.remote_min_rx)
    }

    /// Detection time (asynchronous mode): remote Detect Mult x the larger of our Required Min RX and the
    /// remote's Desired Min TX. Zero before the remote was heard.
    pub(crate) fn detection_time(&self) -> Duration {
        self.timers.interval.max(self.remote_desired_tx).saturating_mul(u32::from(self.remote_mult))
    }

    /// When the task must call [`Machine::poll_timers`] next.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn wanted_desired_tx(&self) -> Duration {
        if self.state == State::Up {
            self.timers.interval
        } else {
            self.timers.interval.max(SLOW_TX)
        }
    }

    fn change(&mut self, to: State, diag: Diag, failure: bool, now: Instant) -> Transition {
        let t = Transition { from: self.state, to, diag, failure };
        self.state = to;
        self.diag = diag;
        if failure {
            self.failures += 1;
        }
        let want = self.wanted_desired_tx();
        if want != self.desired_tx {
            // A timer change is announced with a Poll sequence (section 6.8.3). A decrease (going Up) applies at
            // once; an increase (leaving Up) too, since the session is no longer Up.
            self.desired_tx = want;
            self.poll = true;
        }
        // Tell the remote at once rather than at the next (possibly slow) periodic packet.
        self.next_tx = Some(now);
        t
    }

    /// A received packet that passed decoding and was demultiplexed to this session (section 6.8.6).
    pub(crate) fn receive(&mut self, p: &ControlPacket, now: Instant) -> Option<Transition> {
        self.remote_discr = p.my_discr;
        self.remote_state = p.state;
        self.remote_demand = p.demand;
        self.remote_diag = p.diag;
        self.remote_min_rx = Duration::from_micros(p.required_min_rx.into());
        self.remote_desired_tx = Duration::from_micros(p.desired_min_tx.into());
        self.remote_mult = p.detect_mult;
        if p.final_ {
            self.poll = false;
        }
        if self.state == State::AdminDown {
            return None;
        }
        if p.poll {
            self.final_due = true;
            self.next_tx = Some(now);
        }
        if self.next_tx.is_none() && !self.remote_min_rx.is_zero() {
            self.next_tx = Some(now);
        }
        self.detect_at = Some(now + self.detection_time());
        match (self.state, p.state) {
            (State::Down, State::AdminDown) => None,
            (_, State::AdminDown) => Some(self.change(State::Down, Diag::NeighborDown, false, now)),
            (State::Down, State::Down) => Some(self.change(State::Init, Diag::None, false, now)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                Some(self.change(State::Up, Diag::None, false, now))
            }
            (State::Up, State::Down) => Some(self.change(State::Down, Diag::NeighborDown, true, now)),
            _ => None,
        }
    }

    /// Expires the detection timer if due; returns the transition it caused and the packet to send now, if any
    /// (periodic, Final, or announcing a state change).
    pub(crate) fn poll_timers(&mut self, now: Instant) -> (Option<Transition>, Option<ControlPacket>) {
        let mut t = None;
        if self.detect_at.is_some_and(|d| d <= now) {
            self.detect_at = None;
            // Section 6.8.1: bfd.RemoteDiscr is zeroed when the Detection Time expires.
            self.remote_discr = 0;
            self.remote_state = State::Down;
            if matches!(self.state, State::Init | State::Up) {
                let failure = self.state == State::Up;
                t = Some(self.change(State::Down, Diag::DetectionTimeExpired, failure, now));
            }
        }
        let pkt = match self.next_tx {
            Some(at) if at <= now => Some(self.transmit(now)),
            _ => None,
        };
        (t, pkt)
    }

    /// Puts the session in AdminDown (diag 7) and asks for a packet at once.
    pub(crate) fn admin_down(&mut self, now: Instant) -> Option<Transition> {
        if self.state == State::AdminDown {
            return None;
        }
        let t = self.change(State::AdminDown, Diag::AdminDown, false, now);
        self.detect_at = None;
        Some(t)
    }

    /// Builds the packet to send now and schedules the next periodic one (jittered, section 6.8.7).
    pub(crate) fn transmit(&mut self, now: Instant) -> ControlPacket {
        let final_ = std::mem::take(&mut self.final_due);
        let p = ControlPacket {
            diag: self.diag,
            state: self.state,
            // Poll and Final are never set together; the Poll goes out with the next packet.
            poll: self.poll && !final_,
            final_,
            cpi: false,
            demand: false,
            detect_mult: self.timers.multiplier,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx: micros(self.desired_tx),
            required_min_rx: micros(self.timers.interval),
            required_min_echo_rx: 0,
        };
        let remote_demand = self.remote_demand && self.state == State::Up && self.remote_state == State::Up;
        self.next_tx = if self.remote_min_rx.is_zero() || (remote_demand && !self.poll) {
            // The remote asked for no periodic packets (Required Min RX 0 or Demand mode).
            None
        } else {
            // 75-100 % of the interval (75-90 % with Detect Mult 1).
            let top = if self.timers.multiplier == 1 { 0.9 } else { 1.0 };
            let f = 0.75 + fastrand::f64() * (top - 0.75);
            Some(now + self.tx_interval().mul_f64(f))
        };
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timers = Timers { interval: Duration::from_millis(100), multiplier: 3 };

    fn remote(state: State, your: u32, tx_ms: u32) -> ControlPacket {
        ControlPacket {
            diag: Diag::None,
            state,
            poll: false,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_discr: 77,
            your_discr: your,
            desired_min_tx: tx_ms * 1000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        }
    }

    fn up_machine(now: Instant) -> Machine {
        let mut m = Machine::new(5, T, now);
        m.receive(&remote(State::Down, 0, 1000), now);
        m.receive(&remote(State::Up, 5, 1000), now);
        assert_eq!(m.state(), State::Up);
        m
    }

    #[test]
    fn three_way_handshake_and_slow_start() {
        let now = Instant::now();
        let mut m = Machine::new(5, T, now);
        let (_, p) = m.poll_timers(now);
        let p = p.expect("sends at once");
        assert_eq!((p.state, p.your_discr, p.desired_min_tx), (State::Down, 0, 1_000_000));
        assert_eq!(p.required_min_rx, 100_000);
        // Remote Down -> Init; remote Init -> Up.
        let t = m.receive(&remote(State::Down, 0, 1000), now).expect("to Init");
        assert_eq!((t.from, t.to), (State::Down, State::Init));
        assert_eq!(m.remote_discr(), 77);
        let t = m.receive(&remote(State::Init, 5, 1000), now).expect("to Up");
        assert_eq!((t.to, t.failure), (State::Up, false));
        // Going Up lowers Desired Min TX to 100 ms with a Poll; the change is sent at once.
        let (_, p) = m.poll_timers(now);
        let p = p.expect("state change sent at once");
        assert_eq!((p.state, p.poll, p.desired_min_tx), (State::Up, true, 100_000));
        assert!(m.polling());
        // The remote's Final ends the Poll sequence.
        let mut f = remote(State::Up, 5, 100);
        f.final_ = true;
        m.receive(&f, now);
        assert!(!m.polling());
        assert_eq!(m.tx_interval(), Duration::from_millis(100));
        assert_eq!(m.detection_time(), Duration::from_millis(300));
    }

    #[test]
    fn tx_interval_is_negotiated_and_jittered() {
        let now = Instant::now();
        let mut m = up_machine(now);
        // The remote wants packets no faster than 250 ms.
        let mut p = remote(State::Up, 5, 100);
        p.required_min_rx = 250_000;
        m.receive(&p, now);
        assert_eq!(m.tx_interval(), Duration::from_millis(250));
        for _ in 0..50 {
            m.transmit(now);
            let next = m.next_tx.expect("periodic") - now;
            assert!(next >= Duration::from_micros(187_500) && next <= Duration::from_millis(250), "{next:?}");
        }
        // Required Min RX 0: no periodic packets at all.
        p.required_min_rx = 0;
        m.receive(&p, now);
        m.transmit(now);
        assert_eq!(m.next_tx, None);
    }

    #[test]
    fn detection_time_expiry_is_a_failure_with_diag_1() {
        let now = Instant::now();
        let mut m = up_machine(now);
        m.receive(&remote(State::Up, 5, 100), now);
        let (t, _) = m.poll_timers(now + Duration::from_millis(299));
        assert_eq!(t, None);
        let (t, p) = m.poll_timers(now + Duration::from_millis(300));
        let t = t.expect("detection time expired");
        assert_eq!((t.to, t.diag, t.failure), (State::Down, Diag::DetectionTimeExpired, true));
        assert_eq!(m.failures(), 1);
        let p = p.expect("Down sent at once");
        assert_eq!((p.state, p.diag, p.your_discr), (State::Down, Diag::DetectionTimeExpired, 0));
        // Back to slow transmission, announced by a Poll.
        assert_eq!((p.desired_min_tx, p.poll), (1_000_000, true));
    }

    #[test]
    fn remote_down_is_a_failure_remote_admin_down_is_not() {
        let now = Instant::now();
        let mut m = up_machine(now);
        let mut p = remote(State::AdminDown, 5, 100);
        p.diag = Diag::AdminDown;
        let t = m.receive(&p, now).expect("down");
        assert_eq!((t.to, t.diag, t.failure), (State::Down, Diag::NeighborDown, false));
        assert_eq!(m.failures(), 0);
        let mut m = up_machine(now);
        let t = m.receive(&remote(State::Down, 5, 1000), now).expect("down");
        assert_eq!((t.to, t.diag, t.failure), (State::Down, Diag::NeighborDown, true));
        assert_eq!(m.remote_diag(), Diag::None);
    }

    #[test]
    fn poll_is_answered_with_final_and_admin_down_ignores_input() {
        let now = Instant::now();
        let mut m = up_machine(now);
        m.poll_timers(now);
        let later = now + Duration::from_millis(10);
        let mut p = remote(State::Up, 5, 50);
        p.poll = true;
        m.receive(&p, later);
        let (_, out) = m.poll_timers(later);
        let out = out.expect("Final at once");
        assert!(out.final_ && !out.poll);
        let t = m.admin_down(later).expect("admin down");
        assert_eq!((t.to, t.diag), (State::AdminDown, Diag::AdminDown));
        let (_, out) = m.poll_timers(later);
        assert_eq!(out.map(|p| (p.state, p.diag)), Some((State::AdminDown, Diag::AdminDown)));
        assert_eq!(m.receive(&remote(State::Down, 5, 1000), later), None);
        assert_eq!(m.state(), State::AdminDown);
        assert_eq!(m.next_event().map(|_| ()), Some(()));
    }
}
