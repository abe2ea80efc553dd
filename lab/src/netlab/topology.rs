//! The netlab topology: a public segment, a relay on it, centre LANs behind NAT routers and a
//! partner abroad behind a shaped uplink, each node in its own network namespace.
//!
//! ```text
//!                  {p}-wan: bridge br0 on 10.200.0.0/24, the public segment
//!        |                     |                              |
//!   {p}-relay            {p}-r1 .. {p}-rN                {p}-rp  (tbf both ways)
//!   10.200.0.2           wan 10.200.0.{10+c}             wan 10.200.0.30
//!                        lan 10.{c}.0.1 (bridge)         lan 10.50.0.1
//!                              |                              |
//!                        {p}-c{c}h{h}                    {p}-partner
//!                        10.{c}.0.{10+h}                 10.50.0.10
//! ```
//!
//! Every name derives from the run's prefix `{p}`: namespaces are `{p}-wan`, `{p}-relay`,
//! `{p}-r{c}`, `{p}-c{c}h{h}`, `{p}-rp` and `{p}-partner`. Interface names are short and local
//! to their namespace (`eth0` in every host, `wan`/`lan`/`h{h}` in routers, `br0` and one port per
//! node in `{p}-wan`), so two runs with different prefixes never clash.
//!
//! Routers forward, masquerade everything leaving on `wan` and accept from the WAN only
//! established or related traffic (table `ip netlab`, see [`router_ruleset`]); the router itself
//! accepts nothing new from the WAN. Linux masquerade keeps a host's source port when no other
//! connection already holds that public tuple, and keeps one mapping per LAN source for as long as
//! a connection from it is tracked, so TCP hole punching (simultaneous open from fixed ports)
//! works between centres: a SYN that reaches a router before its own host's SYN has left is
//! dropped silently, and the kernel retries it after its initial 1 s retransmission timeout, so
//! the two `connect()` calls may be up to a second or so apart. Two hosts of one LAN using the
//! same local port towards the same remote address cannot both keep it: the second gets another
//! public port (kept for its later connections), so give hosts distinct ports. What a peer sees:
//! - a centre host is seen by the relay, the partner and other centres at its router's WAN
//!   address (10.200.0.{10+c}) with, normally, its own local port; by hosts of its own LAN at its
//!   LAN address;
//! - dialling another centre's LAN address fails at once (`Network is unreachable`: routers have
//!   no route to other LANs), and dialling a router's WAN address without a hole punched times out
//!   (dropped silently, no RST).
//!
//! Everything is done with the `ip`, `nft`, `tc` and `sysctl` programs, batched (`ip -batch`,
//! one `nft -f -` per router), so a 4×4 topology of 24 namespaces builds in well under a second.
//! Building needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); see [`Topology::check_capabilities`].

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The most centres a topology can have (router WAN addresses 10.200.0.11..=29; .30 is the
/// partner's router).
pub const MAX_CENTRES: usize = 19;
/// The most hosts one centre LAN can have (10.{c}.0.11..=250).
pub const MAX_HOSTS_PER_CENTRE: usize = 240;
/// The fastest shaping the partner link accepts, in Mbit/s.
pub const MAX_PARTNER_MBIT: u32 = 100_000;
/// The longest run prefix (namespace names are `{prefix}-{node}`).
pub const MAX_PREFIX_LEN: usize = 16;
/// The relay's address on the public segment.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The partner router's WAN address: the partner as the rest of the world sees it.
pub const PARTNER_ROUTER_WAN_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 30);
/// The partner host's address on its own LAN.
pub const PARTNER_IP: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 10);
/// The partner router's LAN address.
const PARTNER_ROUTER_LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
/// The nftables table every router holds.
pub const NFT_TABLE: &str = "netlab";
/// The named counter of bytes forwarded from a router's LAN to its WAN.
const COUNTER_OUT: &str = "lan_to_wan";
/// The named counter of bytes forwarded from a router's WAN to its LAN.
const COUNTER_IN: &str = "wan_to_lan";
/// The interface every host, the relay and the partner have.
const HOST_IF: &str = "eth0";

/// Runs of this process so far, so that default prefixes of one process differ.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// What went wrong making, using or removing a topology.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The process may not create namespaces or configure networks.
    NotPrivileged {
        /// What was found (the effective capabilities, or why they could not be read).
        detail: String,
    },
    /// A program the topology needs is not installed.
    MissingProgram {
        /// The program (`ip`, `nft`, `tc`, `sysctl`).
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A network namespace could not be created even though the process looks privileged.
    NoNetns {
        /// The stderr of `ip netns add`.
        stderr: String,
    },
    /// The [`Spec`] cannot be built.
    InvalidSpec(String),
    /// A command could not be started.
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// A command exited with failure.
    Failed {
        /// The command line (and, for a batch, the input line that failed).
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A command succeeded but printed something unexpected.
    Output {
        /// The command line.
        command: String,
        /// What was wrong with its output.
        detail: String,
    },
    /// A host that is not part of this topology.
    UnknownHost(String),
    /// Namespaces of the topology were still there after tearing it down.
    Leftover {
        /// The namespaces that remain.
        namespaces: Vec<String>,
        /// What the delete command said.
        stderr: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotPrivileged { detail } => write!(
                f,
                "netlab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network \
                 namespaces: {detail}"
            ),
            Error::MissingProgram { program, package } => write!(
                f,
                "`{program}` was not found on PATH nor in /usr/sbin, /sbin, /usr/bin, /bin: \
                 install the `{package}` package (apt-get install {package})"
            ),
            Error::NoNetns { stderr } => write!(
                f,
                "cannot create a network namespace (`ip netns add` failed: {}); a container \
                 without CAP_SYS_ADMIN or a kernel without CONFIG_NET_NS cannot run netlab",
                stderr.trim()
            ),
            Error::InvalidSpec(why) => write!(f, "invalid netlab spec: {why}"),
            Error::Spawn { command, source } => write!(f, "could not run `{command}`: {source}"),
            Error::Failed {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {}", stderr.trim()),
            Error::Output { command, detail } => {
                write!(f, "unexpected output from `{command}`: {detail}")
            }
            Error::UnknownHost(name) => write!(f, "host {name} is not part of this topology"),
            Error::Leftover { namespaces, stderr } => write!(
                f,
                "namespaces {} remain after teardown: {}",
                namespaces.join(", "),
                stderr.trim()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Start of every namespace name: 1 to [`MAX_PREFIX_LEN`] lowercase ASCII letters and
    /// digits, starting with a letter. Namespaces of an earlier run with the same prefix are
    /// deleted by [`Topology::build`].
    pub prefix: String,
    /// Centre LANs, each behind its own NAT router (1 to [`MAX_CENTRES`]).
    pub centres: usize,
    /// Hosts on each centre LAN (1 to [`MAX_HOSTS_PER_CENTRE`]).
    pub hosts_per_centre: usize,
    /// Rate of the partner's uplink in each direction, Mbit/s; 0 leaves it unshaped.
    pub partner_mbit: u32,
}

impl Default for Spec {
    /// A prefix made from the process id (and a per-process run number after the first), 4
    /// centres of 4 hosts, and a 20 Mbit/s partner link.
    fn default() -> Self {
        Spec {
            prefix: default_prefix(std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed)),
            centres: 4,
            hosts_per_centre: 4,
            partner_mbit: 20,
        }
    }
}

impl Spec {
    /// Checks the spec can be built; the error says which field is out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= MAX_PREFIX_LEN
            && self.prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !prefix_ok {
            return Err(Error::InvalidSpec(format!(
                "prefix {:?} must be 1 to {MAX_PREFIX_LEN} lowercase ASCII letters or digits, \
                 starting with a letter",
                self.prefix
            )));
        }
        if !(1..=MAX_CENTRES).contains(&self.centres) {
            return Err(Error::InvalidSpec(format!(
                "centres is {}; it must be 1 to {MAX_CENTRES}",
                self.centres
            )));
        }
        if !(1..=MAX_HOSTS_PER_CENTRE).contains(&self.hosts_per_centre) {
            return Err(Error::InvalidSpec(format!(
                "hosts_per_centre is {}; it must be 1 to {MAX_HOSTS_PER_CENTRE}",
                self.hosts_per_centre
            )));
        }
        if self.partner_mbit > MAX_PARTNER_MBIT {
            return Err(Error::InvalidSpec(format!(
                "partner_mbit is {}; it must be at most {MAX_PARTNER_MBIT} (0 for unshaped)",
                self.partner_mbit
            )));
        }
        Ok(())
    }
}

/// One machine of the topology: a namespace with one interface, `eth0`, at `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Host {
    /// Its short name: `relay`, `partner`, or `c{centre}h{index}` (e.g. `c1h2`).
    pub name: String,
    /// Its network namespace (`{prefix}-{name}`).
    pub netns: String,
    /// Its own address (for a centre host, the LAN address; see [`Topology::public_ip`]).
    pub ip: Ipv4Addr,
}

/// Bytes a router forwarded, from its nft counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterTraffic {
    /// `r1`..`rN`, or `rp` for the partner's router.
    pub router: String,
    /// Bytes forwarded from its LAN to the WAN (accepted packets, IP headers included).
    pub lan_to_wan: u64,
    /// Bytes forwarded from the WAN to its LAN (replies and punched connections only).
    pub wan_to_lan: u64,
}

/// A built topology; it is torn down on [`Topology::teardown`] or when dropped.
#[derive(Debug)]
pub struct Topology {
    spec: Spec,
    tools: Tools,
    relay: Host,
    partner: Host,
    hosts: Vec<Host>,
    /// Every namespace of the topology, in creation order.
    namespaces: Vec<String>,
    /// Namespaces may exist (not yet torn down).
    live: bool,
}

impl Topology {
    /// Checks this process can build a topology. Fails with a clear message naming what is
    /// missing: the privileges (root, or CAP_NET_ADMIN and CAP_SYS_ADMIN), one of the `ip`, `tc`,
    /// `nft` and `sysctl` programs (with the package to install), or the ability to create a
    /// network namespace (tried with a throwaway one).
    pub fn check_capabilities() -> Result<(), Error> {
        check_privileges()?;
        let tools = Tools::find()?;
        let probe = format!("mmprobe{:x}", std::process::id());
        // A probe left by a crashed check of a process with the same id.
        let _ = run(&tools, &Step::ip(None, ["netns", "del", probe.as_str()]));
        match run(&tools, &Step::ip(None, ["netns", "add", probe.as_str()])) {
            Ok(_) => {}
            Err(Error::Failed { stderr, .. }) => return Err(Error::NoNetns { stderr }),
            Err(other) => return Err(other),
        }
        run(&tools, &Step::ip(None, ["netns", "del", probe.as_str()]))?;
        Ok(())
    }

    /// Builds the topology of `spec`: first deletes namespaces left with the same prefix by an
    /// earlier run, then creates every namespace, link, address, route, nftables ruleset and
    /// shaper. On any failure it tears down what it made and returns the first error.
    pub fn build(spec: &Spec) -> Result<Topology, Error> {
        spec.validate()?;
        check_privileges()?;
        let tools = Tools::find()?;
        let mut topology = Topology::new(spec, tools);
        remove_stale(&topology.tools, &spec.prefix)?;
        topology.live = true;
        let bridge_netfilter = Path::new("/proc/sys/net/bridge").exists();
        let steps = plan(spec, bridge_netfilter);
        for step in &steps {
            if let Err(error) = run(&topology.tools, step) {
                if let Err(teardown) = topology.teardown() {
                    eprintln!(
                        "netlab: tearing down the half-built topology {} failed: {teardown}",
                        spec.prefix
                    );
                }
                return Err(error);
            }
        }
        Ok(topology)
    }

    /// The topology's hosts as data, before anything is created (so not live: dropping it
    /// deletes nothing).
    fn new(spec: &Spec, tools: Tools) -> Topology {
        let p = &spec.prefix;
        let relay = Host {
            name: "relay".to_string(),
            netns: netns_name(p, "relay"),
            ip: RELAY_IP,
        };
        let partner = Host {
            name: "partner".to_string(),
            netns: netns_name(p, "partner"),
            ip: PARTNER_IP,
        };
        let mut hosts = Vec::with_capacity(spec.centres * spec.hosts_per_centre);
        for c in 1..=spec.centres {
            for h in 1..=spec.hosts_per_centre {
                let name = host_name(c, h);
                hosts.push(Host {
                    netns: netns_name(p, &name),
                    name,
                    ip: host_ip(c, h),
                });
            }
        }
        Topology {
            spec: spec.clone(),
            tools,
            relay,
            partner,
            hosts,
            namespaces: namespaces(spec),
            live: false,
        }
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Every namespace of the topology (routers and the WAN included).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The relay/bootstrap host on the public segment (10.200.0.2).
    pub fn relay(&self) -> &Host {
        &self.relay
    }

    /// The partner abroad (10.50.0.10, seen by others as 10.200.0.30), behind the shaped link.
    pub fn partner(&self) -> &Host {
        &self.partner
    }

    /// The centre hosts, centre-major: `c1h1, c1h2, …, c2h1, …`.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Centre host `index` of centre `centre`, both 1-based.
    ///
    /// # Panics
    /// If either is out of range; [`Topology::try_host`] returns `None` instead.
    pub fn host(&self, centre: usize, index: usize) -> &Host {
        match self.try_host(centre, index) {
            Some(host) => host,
            None => panic!(
                "netlab has no host c{centre}h{index}: {} centres of {} hosts (1-based)",
                self.spec.centres, self.spec.hosts_per_centre
            ),
        }
    }

    /// Centre host `index` of centre `centre`, both 1-based, if there is one.
    pub fn try_host(&self, centre: usize, index: usize) -> Option<&Host> {
        if !(1..=self.spec.centres).contains(&centre)
            || !(1..=self.spec.hosts_per_centre).contains(&index)
        {
            return None;
        }
        self.hosts
            .get((centre - 1) * self.spec.hosts_per_centre + (index - 1))
    }

    /// The centre (1-based) a host belongs to; `None` for the relay, the partner and strangers.
    pub fn centre_of(&self, host: &Host) -> Option<usize> {
        let position = self.hosts.iter().position(|h| h.netns == host.netns)?;
        Some(position / self.spec.hosts_per_centre + 1)
    }

    /// The address the rest of the world sees `host` at: its router's WAN address for a centre
    /// host, 10.200.0.30 for the partner, 10.200.0.2 for the relay.
    pub fn public_ip(&self, host: &Host) -> Option<Ipv4Addr> {
        if host.netns == self.relay.netns {
            Some(RELAY_IP)
        } else if host.netns == self.partner.netns {
            Some(PARTNER_ROUTER_WAN_IP)
        } else {
            self.centre_of(host).map(router_wan_ip)
        }
    }

    /// A command that runs `program` inside the host's namespace (`ip netns exec NS program`);
    /// add its arguments, environment and stdio as usual.
    pub fn command(&self, host: &Host, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(&self.tools.ip);
        command
            .arg("netns")
            .arg("exec")
            .arg(&host.netns)
            .arg(program);
        command
    }

    /// Takes the host's link down at the far end (its port on the LAN bridge, the relay's port
    /// on the WAN bridge, the partner router's LAN side). The host keeps its address and routes;
    /// its packets go nowhere until [`Topology::restore`].
    pub fn cut(&self, host: &Host) -> Result<(), Error> {
        self.set_link(host, "down")
    }

    /// Brings a [`cut`](Topology::cut) link back up. Traffic flows again within a few
    /// milliseconds (the bridges run no STP, so the port forwards at once).
    pub fn restore(&self, host: &Host) -> Result<(), Error> {
        self.set_link(host, "up")
    }

    fn set_link(&self, host: &Host, state: &str) -> Result<(), Error> {
        let (netns, interface) = self
            .far_end(host)
            .ok_or_else(|| Error::UnknownHost(host.name.clone()))?;
        run(
            &self.tools,
            &Step::ip(
                Some(netns),
                ["link", "set", "dev", interface.as_str(), state],
            ),
        )?;
        Ok(())
    }

    /// The namespace and interface at the other end of a host's `eth0`.
    fn far_end(&self, host: &Host) -> Option<(String, String)> {
        let p = &self.spec.prefix;
        if host.netns == self.relay.netns {
            return Some((netns_name(p, "wan"), "relay".to_string()));
        }
        if host.netns == self.partner.netns {
            return Some((netns_name(p, "rp"), "lan".to_string()));
        }
        let position = self.hosts.iter().position(|h| h.netns == host.netns)?;
        let centre = position / self.spec.hosts_per_centre + 1;
        let index = position % self.spec.hosts_per_centre + 1;
        Some((netns_name(p, &router_name(centre)), format!("h{index}")))
    }

    /// The routers' short names, `r1`..`rN` then `rp`.
    pub fn routers(&self) -> Vec<String> {
        routers(self.spec.centres)
    }

    /// The centre routers' short names, `r1`..`rN` (router `c` serves the hosts of
    /// [`Topology::host`]`(c, _)`); the partner's `rp` is not one of them.
    pub fn centre_routers(&self) -> Vec<String> {
        (1..=self.spec.centres).map(router_name).collect()
    }

    /// Bytes each router forwarded in each direction, from its nft counters, by router name
    /// (`r1`..`rN`, then `rp`). Only forwarded packets that were accepted are counted: traffic
    /// between hosts of one LAN and dropped attempts from the WAN are not.
    pub fn router_traffic(&self) -> Result<Vec<RouterTraffic>, Error> {
        let mut traffic = Vec::new();
        for router in self.routers() {
            let step = Step::in_netns(
                Tool::Nft,
                &netns_name(&self.spec.prefix, &router),
                ["-j", "list", "counters", "table", "ip", NFT_TABLE],
            );
            let json = run(&self.tools, &step)?;
            let (lan_to_wan, wan_to_lan) =
                parse_counters(&json).map_err(|detail| Error::Output {
                    command: step.describe(),
                    detail,
                })?;
            traffic.push(RouterTraffic {
                router,
                lan_to_wan,
                wan_to_lan,
            });
        }
        Ok(traffic)
    }

    /// Bytes through each router's WAN side, both directions added, by router name (`r1`..`rN`,
    /// then `rp`); see [`Topology::router_traffic`].
    pub fn router_bytes(&self) -> Result<Vec<(String, u64)>, Error> {
        Ok(self
            .router_traffic()?
            .into_iter()
            .map(|t| (t.router, t.lan_to_wan.saturating_add(t.wan_to_lan)))
            .collect())
    }

    /// Bytes through the relay's interface, received plus sent (Ethernet frames as the kernel
    /// counts them), since the topology was built. This is all of the relay's traffic: circuits
    /// it relays, and its own gossip and bootstrap traffic.
    pub fn relay_bytes(&self) -> Result<u64, Error> {
        self.link_bytes(&self.relay)
    }

    /// Bytes through any host's `eth0`, received plus sent, since the topology was built.
    pub fn link_bytes(&self, host: &Host) -> Result<u64, Error> {
        if self.far_end(host).is_none() {
            return Err(Error::UnknownHost(host.name.clone()));
        }
        let step = Step::ip(
            Some(host.netns.clone()),
            ["-j", "-s", "link", "show", "dev", HOST_IF],
        );
        let json = run(&self.tools, &step)?;
        parse_link_bytes(&json).map_err(|detail| Error::Output {
            command: step.describe(),
            detail,
        })
    }

    /// Deletes every namespace of the topology (which removes their links, rules and shapers).
    /// Idempotent: a second call, or a call after a failed build, does nothing more. Processes
    /// still running inside the namespaces are not killed (they lose their network); stop them
    /// first.
    pub fn teardown(&mut self) -> Result<(), Error> {
        if !self.live {
            return Ok(());
        }
        let ours: HashSet<&str> = self.namespaces.iter().map(String::as_str).collect();
        let present: Vec<String> = list_netns(&self.tools)?
            .into_iter()
            .filter(|n| ours.contains(n.as_str()))
            .collect();
        delete_netns(&self.tools, &present)?;
        self.live = false;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            // `tracing` is not a dependency of this crate; stderr is where a test shows it.
            eprintln!(
                "netlab: tearing down topology {} failed: {error}",
                self.spec.prefix
            );
        }
    }
}

/// The programs the topology runs, resolved to paths.
#[derive(Debug, Clone)]
struct Tools {
    ip: PathBuf,
    nft: PathBuf,
    tc: PathBuf,
    sysctl: PathBuf,
}

impl Tools {
    /// Finds every program, or names the first missing one and its package.
    fn find() -> Result<Tools, Error> {
        let need = |program: &'static str, package: &'static str| {
            find_program(program).ok_or(Error::MissingProgram { program, package })
        };
        Ok(Tools {
            ip: need("ip", "iproute2")?,
            tc: need("tc", "iproute2")?,
            nft: need("nft", "nftables")?,
            sysctl: need("sysctl", "procps")?,
        })
    }

    fn path(&self, tool: Tool) -> &Path {
        match tool {
            Tool::Ip => &self.ip,
            Tool::Nft => &self.nft,
            Tool::Tc => &self.tc,
            Tool::Sysctl => &self.sysctl,
        }
    }
}

/// An executable file named `program` on PATH or in the usual system folders (root's tools
/// live in sbin, which a non-login PATH may lack).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// CAP_NET_ADMIN: configure interfaces, routes, nftables, qdiscs.
const CAP_NET_ADMIN: u32 = 12;
/// CAP_SYS_ADMIN: `ip netns add` bind-mounts the namespace, `ip netns exec` remounts /sys.
const CAP_SYS_ADMIN: u32 = 21;

/// Fails unless the process has CAP_NET_ADMIN and CAP_SYS_ADMIN in its effective set.
fn check_privileges() -> Result<(), Error> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| Error::NotPrivileged {
            detail: format!("cannot read /proc/self/status: {e}"),
        })?;
    let caps = effective_capabilities(&status).ok_or_else(|| Error::NotPrivileged {
        detail: "no CapEff line in /proc/self/status".to_string(),
    })?;
    let needed = (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SYS_ADMIN);
    if caps & needed != needed {
        return Err(Error::NotPrivileged {
            detail: format!(
                "effective capabilities are {caps:#x}, without one or both; run as root with \
                 full capabilities (e.g. sudo, or a privileged container)"
            ),
        });
    }
    Ok(())
}

/// The effective capability set from the text of `/proc/self/status`.
fn effective_capabilities(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The default prefix: `mm` and the process id in hex, then `n` and the run number in hex for
/// every run of the process after the first (hex digits hold no `n`, so prefixes never collide).
fn default_prefix(pid: u32, run: u32) -> String {
    if run == 0 {
        format!("mm{pid:x}")
    } else {
        format!("mm{pid:x}n{run:x}")
    }
}

/// Whether `name` is a namespace of a default prefix (`mm<pid hex>[n<run hex>]-<node>`) whose
/// process no longer runs.
fn orphaned(name: &str) -> bool {
    let Some((prefix, _node)) = name.split_once('-') else {
        return false;
    };
    let Some(rest) = prefix.strip_prefix("mm") else {
        return false;
    };
    let pid_hex = rest.split_once('n').map_or(rest, |(pid, _)| pid);
    let Ok(pid) = u32::from_str_radix(pid_hex, 16) else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// A namespace's name.
fn netns_name(prefix: &str, node: &str) -> String {
    format!("{prefix}-{node}")
}

/// A centre host's short name.
fn host_name(centre: usize, index: usize) -> String {
    format!("c{centre}h{index}")
}

/// A centre router's short name.
fn router_name(centre: usize) -> String {
    format!("r{centre}")
}

/// Every router's short name: `r1`..`rN`, then the partner's `rp`.
fn routers(centres: usize) -> Vec<String> {
    (1..=centres)
        .map(router_name)
        .chain(std::iter::once("rp".to_string()))
        .collect()
}

/// An octet of a validated spec's numbering (centres and hosts are bounded well below 256).
fn octet(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// A centre router's WAN address, 10.200.0.{10+c}.
pub fn router_wan_ip(centre: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, octet(10 + centre))
}

/// A centre router's LAN address, 10.{c}.0.1.
pub fn router_lan_ip(centre: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(centre), 0, 1)
}

/// A centre host's address, 10.{c}.0.{10+h}.
pub fn host_ip(centre: usize, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(centre), 0, octet(10 + index))
}

/// Every namespace of a spec, in creation order.
fn namespaces(spec: &Spec) -> Vec<String> {
    let p = &spec.prefix;
    let mut names = vec![netns_name(p, "wan"), netns_name(p, "relay")];
    for c in 1..=spec.centres {
        names.push(netns_name(p, &router_name(c)));
        for h in 1..=spec.hosts_per_centre {
            names.push(netns_name(p, &host_name(c, h)));
        }
    }
    names.push(netns_name(p, "rp"));
    names.push(netns_name(p, "partner"));
    names
}

/// Whether namespace `name` is one a topology with `prefix` would make (so an earlier run's).
fn is_ours(prefix: &str, name: &str) -> bool {
    let Some(node) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match node {
        "wan" | "relay" | "rp" | "partner" => true,
        _ => {
            if let Some(centre) = node.strip_prefix('r') {
                number(centre)
            } else if let Some(rest) = node.strip_prefix('c') {
                rest.split_once('h')
                    .is_some_and(|(centre, host)| number(centre) && number(host))
            } else {
                false
            }
        }
    }
}

/// Namespace names from the output of `ip netns list` (`name` or `name (id: N)` per line).
fn parse_netns_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The names of every network namespace.
fn list_netns(tools: &Tools) -> Result<Vec<String>, Error> {
    Ok(parse_netns_list(&run(
        tools,
        &Step::ip(None, ["netns", "list"]),
    )?))
}

/// Deletes `names` in one `ip -force -batch -`, then checks none is left.
fn delete_netns(tools: &Tools, names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Ok(());
    }
    let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    let outcome = run(tools, &Step::ip_batch(None, script).forced());
    let remaining: Vec<String> = list_netns(tools)?
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    if remaining.is_empty() {
        return Ok(());
    }
    Err(Error::Leftover {
        namespaces: remaining,
        stderr: match outcome {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        },
    })
}

/// Deletes every namespace an earlier run with this prefix left behind, and those of default
/// prefixes (`mm<pid>`) whose process is gone (a run killed by a signal does not tear down).
fn remove_stale(tools: &Tools, prefix: &str) -> Result<(), Error> {
    let stale: Vec<String> = list_netns(tools)?
        .into_iter()
        .filter(|n| is_ours(prefix, n) || orphaned(n))
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "netlab: deleting {} namespaces left by an earlier run: {}",
            stale.len(),
            stale.join(" ")
        );
    }
    delete_netns(tools, &stale)
}

/// The nftables ruleset of every router: drop new connections from the WAN (to the router and
/// through it), forward the LAN out with masquerade, count forwarded bytes each way.
pub fn router_ruleset() -> String {
    format!(
        r#"table ip {NFT_TABLE} {{
  counter {COUNTER_OUT} {{ }}
  counter {COUNTER_IN} {{ }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
    iifname "lan" accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "lan" accept
    iifname "lan" oifname "wan" counter name "{COUNTER_OUT}" accept
    iifname "wan" oifname "lan" ct state established,related counter name "{COUNTER_IN}" accept
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }}
}}
"#
    )
}

/// The token bucket size for `mbit`: at least 32 KiB, and 4 ms worth at high rates.
fn tbf_burst_bytes(mbit: u32) -> u64 {
    (u64::from(mbit) * 1_000_000 / 8 / 250).max(32 * 1024)
}

/// A program of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ip,
    Nft,
    Tc,
    Sysctl,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ip => "ip",
            Tool::Nft => "nft",
            Tool::Tc => "tc",
            Tool::Sysctl => "sysctl",
        }
    }
}

/// One command of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    tool: Tool,
    /// Run inside this namespace with `ip netns exec` (for programs without a `-n` option).
    exec_in: Option<String>,
    args: Vec<String>,
    /// Written to its stdin (batches and rulesets).
    stdin: Option<String>,
}

impl Step {
    /// `ip [-n NS] ARGS`.
    fn ip<'a>(netns: Option<String>, args: impl IntoIterator<Item = &'a str>) -> Step {
        let mut all = Vec::new();
        if let Some(ns) = netns {
            all.push("-n".to_string());
            all.push(ns);
        }
        all.extend(args.into_iter().map(str::to_string));
        Step {
            tool: Tool::Ip,
            exec_in: None,
            args: all,
            stdin: None,
        }
    }

    /// `ip [-n NS] -batch -` fed `script`.
    fn ip_batch(netns: Option<String>, script: String) -> Step {
        Step {
            stdin: Some(script),
            ..Step::ip(netns, ["-batch", "-"])
        }
    }

    /// The same batch, going on past failing lines (`ip -force`).
    fn forced(mut self) -> Step {
        self.args.insert(0, "-force".to_string());
        self
    }

    /// `tc -n NS -batch -` fed `script`.
    fn tc_batch(netns: String, script: String) -> Step {
        Step {
            tool: Tool::Tc,
            exec_in: None,
            args: vec![
                "-n".to_string(),
                netns,
                "-batch".to_string(),
                "-".to_string(),
            ],
            stdin: Some(script),
        }
    }

    /// `ip netns exec NS TOOL ARGS`.
    fn in_netns<'a>(tool: Tool, netns: &str, args: impl IntoIterator<Item = &'a str>) -> Step {
        Step {
            tool,
            exec_in: Some(netns.to_string()),
            args: args.into_iter().map(str::to_string).collect(),
            stdin: None,
        }
    }

    fn with_stdin(mut self, stdin: String) -> Step {
        self.stdin = Some(stdin);
        self
    }

    /// The command line, for messages.
    fn describe(&self) -> String {
        let mut words: Vec<&str> = Vec::new();
        if let Some(ns) = &self.exec_in {
            words.extend(["ip", "netns", "exec", ns.as_str()]);
        }
        words.push(self.tool.name());
        words.extend(self.args.iter().map(String::as_str));
        words.join(" ")
    }

    fn command(&self, tools: &Tools) -> Command {
        let mut command = match &self.exec_in {
            Some(ns) => {
                let mut c = Command::new(&tools.ip);
                c.args(["netns", "exec", ns.as_str()])
                    .arg(tools.path(self.tool));
                c
            }
            None => Command::new(tools.path(self.tool)),
        };
        command
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// Runs a step and returns its stdout; the error names the command (and a failing batch line).
fn run(tools: &Tools, step: &Step) -> Result<String, Error> {
    let describe = || step.describe();
    let mut child = step.command(tools).spawn().map_err(|source| Error::Spawn {
        command: describe(),
        source,
    })?;
    let stdin = child.stdin.take();
    let output = std::thread::scope(|scope| {
        if let (Some(mut pipe), Some(script)) = (stdin, step.stdin.as_deref()) {
            // A write error (the program exited early) shows in its status and stderr.
            scope.spawn(move || pipe.write_all(script.as_bytes()));
        }
        child.wait_with_output()
    })
    .map_err(|source| Error::Spawn {
        command: describe(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        let mut command = describe();
        if let Some(line) = step
            .stdin
            .as_deref()
            .and_then(|s| failed_batch_line(s, &stderr))
        {
            command.push_str(&format!(" (input line: {line})"));
        }
        return Err(Error::Failed {
            command,
            status: output.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The input line a batch failed on, from `Command failed -:N` in its stderr.
fn failed_batch_line<'a>(script: &'a str, stderr: &str) -> Option<&'a str> {
    let at = stderr.find("Command failed -:")? + "Command failed -:".len();
    let number: usize = stderr[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    script.lines().nth(number.checked_sub(1)?)
}

/// Every command that builds `spec`, in order. `bridge_netfilter`: the kernel has
/// br_netfilter, whose per-namespace switch is turned off in routers so that traffic inside a
/// LAN bridge stays out of the routers' nftables.
fn plan(spec: &Spec, bridge_netfilter: bool) -> Vec<Step> {
    let p = &spec.prefix;
    let ns = |node: &str| netns_name(p, node);
    let mut steps = Vec::new();

    let create: String = namespaces(spec)
        .iter()
        .map(|n| format!("netns add {n}\n"))
        .collect();
    steps.push(Step::ip_batch(None, create));

    // The public segment: a bridge with one port per node; each peer end is created directly in
    // the node's namespace, named `eth0` (relay) or `wan` (routers).
    let mut wan = String::from("link set lo up\nlink add br0 type bridge\nlink set br0 up\n");
    wan.push_str(&format!(
        "link add relay type veth peer name {HOST_IF} netns {}\nlink set relay master br0 up\n",
        ns("relay")
    ));
    for router in routers(spec.centres) {
        wan.push_str(&format!(
            "link add {router} type veth peer name wan netns {}\nlink set {router} master br0 up\n",
            ns(&router)
        ));
    }
    steps.push(Step::ip_batch(Some(ns("wan")), wan));
    steps.push(Step::ip_batch(
        Some(ns("relay")),
        host_script(RELAY_IP, None),
    ));

    for c in 1..=spec.centres {
        let mut router = format!(
            "link set lo up\nlink set wan up\naddr add {}/24 dev wan\n\
             link add lan type bridge\nlink set lan up\naddr add {}/24 dev lan\n",
            router_wan_ip(c),
            router_lan_ip(c)
        );
        for h in 1..=spec.hosts_per_centre {
            router.push_str(&format!(
                "link add h{h} type veth peer name {HOST_IF} netns {}\nlink set h{h} master lan up\n",
                ns(&host_name(c, h))
            ));
        }
        steps.push(Step::ip_batch(Some(ns(&router_name(c))), router));
        for h in 1..=spec.hosts_per_centre {
            steps.push(Step::ip_batch(
                Some(ns(&host_name(c, h))),
                host_script(host_ip(c, h), Some(router_lan_ip(c))),
            ));
        }
    }

    // The partner's router has a single host, so its LAN side is a plain veth `lan`.
    steps.push(Step::ip_batch(
        Some(ns("rp")),
        format!(
            "link set lo up\nlink set wan up\naddr add {PARTNER_ROUTER_WAN_IP}/24 dev wan\n\
             link add lan type veth peer name {HOST_IF} netns {}\nlink set lan up\n\
             addr add {PARTNER_ROUTER_LAN_IP}/24 dev lan\n",
            ns("partner")
        ),
    ));
    steps.push(Step::ip_batch(
        Some(ns("partner")),
        host_script(PARTNER_IP, Some(PARTNER_ROUTER_LAN_IP)),
    ));

    for router in routers(spec.centres) {
        let mut sysctl = vec!["-q", "-w", "net.ipv4.ip_forward=1"];
        if bridge_netfilter {
            sysctl.push("net.bridge.bridge-nf-call-iptables=0");
        }
        steps.push(Step::in_netns(Tool::Sysctl, &ns(&router), sysctl));
        steps.push(
            Step::in_netns(Tool::Nft, &ns(&router), ["-f", "-"]).with_stdin(router_ruleset()),
        );
    }

    if spec.partner_mbit > 0 {
        let burst = tbf_burst_bytes(spec.partner_mbit);
        let mbit = spec.partner_mbit;
        // Egress of the WAN side shapes the partner's upload, egress of the LAN side its
        // download.
        let script: String = ["wan", "lan"]
            .iter()
            .map(|dev| {
                format!("qdisc add dev {dev} root tbf rate {mbit}mbit burst {burst} latency 50ms\n")
            })
            .collect();
        steps.push(Step::tc_batch(ns("rp"), script));
    }
    steps
}

/// The `ip -batch` script of a host: `eth0` up at `ip`/24, default route via `gateway`.
fn host_script(ip: Ipv4Addr, gateway: Option<Ipv4Addr>) -> String {
    let mut script =
        format!("link set lo up\nlink set {HOST_IF} up\naddr add {ip}/24 dev {HOST_IF}\n");
    if let Some(gateway) = gateway {
        script.push_str(&format!("route add default via {gateway}\n"));
    }
    script
}

/// The `lan_to_wan` and `wan_to_lan` byte counts from `nft -j list counters table ...`.
fn parse_counters(json: &str) -> Result<(u64, u64), String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let items = value
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .ok_or("no `nftables` array")?;
    let bytes_of = |name: &str| {
        items
            .iter()
            .filter_map(|item| item.get("counter"))
            .find(|counter| counter.get("name").and_then(serde_json::Value::as_str) == Some(name))
            .and_then(|counter| counter.get("bytes"))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("no counter `{name}` with a byte count"))
    };
    Ok((bytes_of(COUNTER_OUT)?, bytes_of(COUNTER_IN)?))
}

/// Received plus sent bytes from `ip -j -s link show dev IF`.
fn parse_link_bytes(json: &str) -> Result<u64, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let link = value
        .as_array()
        .and_then(|links| links.first())
        .ok_or("no link in the answer")?;
    let stats = link
        .get("stats64")
        .or_else(|| link.get("stats"))
        .ok_or("no `stats64` (was `-s` passed?)")?;
    let bytes = |direction: &str| {
        stats
            .get(direction)
            .and_then(|d| d.get("bytes"))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("no `{direction}.bytes`"))
    };
    Ok(bytes("rx")?.saturating_add(bytes("tx")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(centres: usize, hosts: usize) -> Spec {
        Spec {
            prefix: "mm3a".to_string(),
            centres,
            hosts_per_centre: hosts,
            partner_mbit: 20,
        }
    }

    fn tools() -> Tools {
        Tools {
            ip: PathBuf::from("/usr/sbin/ip"),
            nft: PathBuf::from("/usr/sbin/nft"),
            tc: PathBuf::from("/usr/sbin/tc"),
            sysctl: PathBuf::from("/usr/sbin/sysctl"),
        }
    }

    #[test]
    fn addresses_follow_the_numbering() {
        assert_eq!(router_wan_ip(1), Ipv4Addr::new(10, 200, 0, 11));
        assert_eq!(router_wan_ip(MAX_CENTRES), Ipv4Addr::new(10, 200, 0, 29));
        assert_eq!(router_lan_ip(3), Ipv4Addr::new(10, 3, 0, 1));
        assert_eq!(host_ip(2, 4), Ipv4Addr::new(10, 2, 0, 14));
        assert_eq!(
            host_ip(MAX_CENTRES, MAX_HOSTS_PER_CENTRE),
            Ipv4Addr::new(10, 19, 0, 250)
        );
        // No centre's addresses run into the public segment, the partner's or the relay's.
        for c in 1..=MAX_CENTRES {
            assert_ne!(router_wan_ip(c), PARTNER_ROUTER_WAN_IP);
            assert_ne!(router_wan_ip(c), RELAY_IP);
            assert_ne!(router_lan_ip(c).octets()[1], PARTNER_IP.octets()[1]);
        }
    }

    #[test]
    fn hosts_are_centre_major_and_found_back() {
        let topology = Topology::new(&spec(3, 2), tools());
        let names: Vec<&str> = topology.hosts().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["c1h1", "c1h2", "c2h1", "c2h2", "c3h1", "c3h2"]);
        let host = topology.host(2, 1);
        assert_eq!(host.netns, "mm3a-c2h1");
        assert_eq!(host.ip, Ipv4Addr::new(10, 2, 0, 11));
        assert_eq!(topology.centre_of(host), Some(2));
        assert_eq!(topology.centre_of(topology.host(3, 2)), Some(3));
        assert_eq!(topology.centre_of(topology.relay()), None);
        assert_eq!(topology.centre_of(topology.partner()), None);
        assert_eq!(topology.try_host(0, 1), None);
        assert_eq!(topology.try_host(4, 1), None);
        assert_eq!(topology.try_host(1, 3), None);
        assert_eq!(topology.relay().netns, "mm3a-relay");
        assert_eq!(topology.relay().ip, RELAY_IP);
        assert_eq!(topology.partner().netns, "mm3a-partner");
        assert_eq!(topology.partner().ip, PARTNER_IP);
        assert_eq!(
            topology.public_ip(host),
            Some(Ipv4Addr::new(10, 200, 0, 12))
        );
        assert_eq!(
            topology.public_ip(topology.partner()),
            Some(PARTNER_ROUTER_WAN_IP)
        );
        assert_eq!(topology.routers(), ["r1", "r2", "r3", "rp"]);
        assert_eq!(topology.centre_routers(), ["r1", "r2", "r3"]);
        assert_eq!(
            topology.far_end(host),
            Some(("mm3a-r2".to_string(), "h1".to_string()))
        );
        assert_eq!(
            topology.far_end(topology.relay()),
            Some(("mm3a-wan".to_string(), "relay".to_string()))
        );
        let stranger = Host {
            name: "c9h9".to_string(),
            netns: "other-c9h9".to_string(),
            ip: host_ip(9, 9),
        };
        assert_eq!(topology.far_end(&stranger), None);
        assert!(matches!(
            topology.cut(&stranger),
            Err(Error::UnknownHost(_))
        ));
        // Never built: dropping it deletes nothing.
        assert!(!topology.live);
    }

    #[test]
    fn default_spec_and_prefixes() {
        assert_eq!(default_prefix(0x3a2f, 0), "mm3a2f");
        assert_eq!(default_prefix(0x3a2f, 26), "mm3a2fn1a");
        // Linux pids stay at or below 2^22: 2^28 runs of one process still fit the limit.
        assert!(default_prefix(1 << 22, (1 << 28) - 1).len() <= MAX_PREFIX_LEN);
        let a = Spec::default();
        let b = Spec::default();
        assert_ne!(a.prefix, b.prefix);
        assert_eq!((a.centres, a.hosts_per_centre, a.partner_mbit), (4, 4, 20));
        a.validate().expect("the default spec is valid");
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_named() {
        let reason = |s: Spec| match s.validate() {
            Err(Error::InvalidSpec(why)) => why,
            other => panic!("expected InvalidSpec, got {other:?}"),
        };
        for prefix in [
            "",
            "Mm3",
            "3mm",
            "mm-3",
            "mm 3",
            "abcdefghijklmnopq",
            "mm\u{e9}",
        ] {
            let s = Spec {
                prefix: prefix.to_string(),
                ..spec(1, 1)
            };
            assert!(reason(s).contains("prefix"), "{prefix:?}");
        }
        assert!(reason(spec(0, 1)).contains("centres"));
        assert!(reason(spec(MAX_CENTRES + 1, 1)).contains("centres"));
        assert!(reason(spec(1, 0)).contains("hosts_per_centre"));
        assert!(reason(spec(1, MAX_HOSTS_PER_CENTRE + 1)).contains("hosts_per_centre"));
        let fast = Spec {
            partner_mbit: MAX_PARTNER_MBIT + 1,
            ..spec(1, 1)
        };
        assert!(reason(fast).contains("partner_mbit"));
        spec(MAX_CENTRES, MAX_HOSTS_PER_CENTRE)
            .validate()
            .expect("the largest spec is valid");
    }

    #[test]
    fn namespaces_of_dead_default_prefixes_are_orphans() {
        // A pid above the kernel's maximum (2^22) never runs.
        assert!(orphaned("mm7fffffff-relay"));
        assert!(orphaned("mm7fffffffn2-c1h1"));
        assert!(!orphaned(&format!("mm{:x}-relay", std::process::id())));
        assert!(!orphaned("mmxyz-relay"));
        assert!(!orphaned("other-relay"));
        assert!(!orphaned("mm7fffffff"));
    }

    #[test]
    fn stale_namespaces_are_recognised_by_prefix_and_shape() {
        for name in [
            "mm3a-wan",
            "mm3a-relay",
            "mm3a-r1",
            "mm3a-r12",
            "mm3a-rp",
            "mm3a-partner",
            "mm3a-c1h1",
            "mm3a-c19h240",
        ] {
            assert!(is_ours("mm3a", name), "{name}");
        }
        for name in [
            "mm3-wan",
            "mm3ab-wan",
            "mm3a",
            "mm3a-",
            "mm3a-r",
            "mm3a-c1",
            "mm3a-c1h",
            "mm3a-ch1",
            "mm3a-c1h1x",
            "mm3a-wanx",
            "other-mm3a-wan",
        ] {
            assert!(!is_ours("mm3a", name), "{name}");
        }
        // Everything a topology makes is recognised as its own.
        for name in namespaces(&spec(4, 4)) {
            assert!(is_ours("mm3a", &name), "{name}");
        }
        assert_eq!(
            parse_netns_list("mm3a-wan (id: 3)\nmm3a-relay\n\nother (id: 0)\n"),
            ["mm3a-wan", "mm3a-relay", "other"]
        );
    }

    #[test]
    fn the_plan_creates_every_namespace_first_with_short_interface_names() {
        let s = spec(4, 4);
        let steps = plan(&s, true);
        let names = namespaces(&s);
        assert_eq!(names.len(), 2 + 4 * 5 + 2);
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
        let create = steps[0].stdin.as_deref().expect("a batch");
        assert_eq!(create.lines().count(), names.len());
        assert!(
            names
                .iter()
                .all(|n| create.contains(&format!("netns add {n}\n")))
        );

        // Interface names fit IFNAMSIZ, and every veth peer lands in a namespace of the run.
        let mut interfaces = 0;
        for step in &steps {
            for line in step.stdin.as_deref().unwrap_or("").lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                for pair in words.windows(2) {
                    if matches!(pair, ["add", _] | ["name", _]) && words[0] == "link" {
                        assert!(pair[1].len() <= 15, "{line}");
                        interfaces += 1;
                    }
                    if pair[0] == "netns" && words[0] == "link" {
                        assert!(names.iter().any(|n| n == pair[1]), "{line}");
                    }
                }
            }
        }
        // br0, relay + 5 routers' WAN veths (2 names each), 4 LAN bridges, 16 host veths
        // (2 each), the partner's LAN veth (2).
        assert_eq!(interfaces, 1 + 2 * 6 + 4 + 2 * 16 + 2);

        // Hosts get their address and the default route via their router.
        let c2h3 = steps
            .iter()
            .find(|st| {
                st.args
                    .starts_with(&["-n".to_string(), "mm3a-c2h3".to_string()])
            })
            .and_then(|st| st.stdin.as_deref())
            .expect("c2h3's batch");
        assert!(c2h3.contains("addr add 10.2.0.13/24 dev eth0"));
        assert!(c2h3.contains("route add default via 10.2.0.1"));

        // Each router gets forwarding and the ruleset; the partner's uplink is shaped both ways.
        let rulesets = steps
            .iter()
            .filter(|st| st.tool == Tool::Nft && st.stdin.as_deref() == Some(&router_ruleset()))
            .count();
        assert_eq!(rulesets, 5);
        let sysctls: Vec<&Step> = steps.iter().filter(|st| st.tool == Tool::Sysctl).collect();
        assert_eq!(sysctls.len(), 5);
        assert!(sysctls.iter().all(|st| {
            st.args
                .iter()
                .any(|a| a == "net.bridge.bridge-nf-call-iptables=0")
        }));
        let without_brnf = plan(&s, false);
        assert!(
            !without_brnf
                .iter()
                .flat_map(|st| &st.args)
                .any(|a| a.contains("bridge"))
        );
        let tc = steps.last().expect("steps");
        assert_eq!(tc.tool, Tool::Tc);
        assert_eq!(tc.args[..2], ["-n".to_string(), "mm3a-rp".to_string()]);
        let shaping = tc.stdin.as_deref().expect("a batch");
        assert!(shaping.contains("qdisc add dev wan root tbf rate 20mbit"));
        assert!(shaping.contains("qdisc add dev lan root tbf rate 20mbit"));
        let unshaped = Spec {
            partner_mbit: 0,
            ..s
        };
        assert!(plan(&unshaped, true).iter().all(|st| st.tool != Tool::Tc));
    }

    #[test]
    fn the_ruleset_masquerades_and_keeps_the_wan_out() {
        let rules = router_ruleset();
        assert!(rules.starts_with("table ip netlab {"));
        assert!(rules.contains(r#"oifname "wan" masquerade"#));
        assert!(rules.contains(
            r#"iifname "wan" oifname "lan" ct state established,related counter name "wan_to_lan" accept"#
        ));
        assert!(rules.contains(r#"iifname "lan" oifname "wan" counter name "lan_to_wan" accept"#));
        assert_eq!(rules.matches("policy drop;").count(), 2);
        assert_eq!(rules.matches('{').count(), rules.matches('}').count());
    }

    #[test]
    fn burst_scales_with_the_rate() {
        assert_eq!(tbf_burst_bytes(20), 32 * 1024);
        assert_eq!(tbf_burst_bytes(1000), 500_000);
        assert_eq!(tbf_burst_bytes(MAX_PARTNER_MBIT), 50_000_000);
    }

    #[test]
    fn counters_and_link_statistics_are_parsed() {
        let counters = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "ip", "name": "lan_to_wan", "table": "netlab", "handle": 4, "packets": 10, "bytes": 536}},
            {"counter": {"family": "ip", "name": "wan_to_lan", "table": "netlab", "handle": 5, "packets": 6, "bytes": 364}}]}"#;
        assert_eq!(parse_counters(counters), Ok((536, 364)));
        assert!(
            parse_counters(r#"{"nftables": []}"#)
                .expect_err("no counters")
                .contains("lan_to_wan")
        );
        assert!(parse_counters("Error: no such table").is_err());

        let link = r#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":6292053190,"packets":1},
            "tx":{"bytes":28240204,"packets":2}}}]"#;
        assert_eq!(parse_link_bytes(link), Ok(6_292_053_190 + 28_240_204));
        assert!(parse_link_bytes(r#"[{"ifname":"eth0"}]"#).is_err());
        assert!(parse_link_bytes("[]").is_err());
    }

    #[test]
    fn errors_name_the_command_and_its_stderr() {
        let script = "link set lo up\nlink add br0 type bridge\n";
        let stderr = "RTNETLINK answers: File exists\nCommand failed -:2\n";
        assert_eq!(
            failed_batch_line(script, stderr),
            Some("link add br0 type bridge")
        );
        assert_eq!(failed_batch_line(script, "Command failed -:0"), None);
        assert_eq!(failed_batch_line(script, "something else"), None);

        let step = Step::in_netns(Tool::Nft, "mm3a-r1", ["-f", "-"]);
        assert_eq!(step.describe(), "ip netns exec mm3a-r1 nft -f -");
        let failed = Error::Failed {
            command: step.describe(),
            status: "exit status: 1".to_string(),
            stderr: "Error: Could not process rule: No such file or directory\n".to_string(),
        };
        let message = failed.to_string();
        assert!(message.contains("ip netns exec mm3a-r1 nft -f -"));
        assert!(message.contains("Could not process rule"));
        let missing = Error::MissingProgram {
            program: "nft",
            package: "nftables",
        };
        assert!(
            missing
                .to_string()
                .contains("install the `nftables` package")
        );
        assert_eq!(
            effective_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(
            effective_capabilities("CapEff:\t0000000000000000\n"),
            Some(0)
        );
        assert_eq!(effective_capabilities("Name: x\n"), None);
        let forced = Step::ip_batch(None, String::new()).forced();
        assert_eq!(forced.describe(), "ip -force -batch -");
    }
}
