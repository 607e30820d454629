//! Command line and bootstrap settings. Every default is a named constant.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::AccessLogFormat;

/// Default plaintext Ingress listener.
pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
/// Default TLS Ingress listener.
pub const DEFAULT_HTTPS: &str = "0.0.0.0:8443";
/// Default address Gateway listeners bind on.
pub const DEFAULT_GATEWAY_ADDRESS: &str = "0.0.0.0";
/// Default admin listener (metrics, health, config dump).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// Default IngressClass name.
pub const DEFAULT_INGRESS_CLASS: &str = "weir";
/// Default time open connections get to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
/// Default mesh inbound (mutual TLS) listener.
pub const DEFAULT_MESH_INBOUND: &str = "0.0.0.0:15008";
/// Default mesh outbound listener (plain HTTP from the local workload).
pub const DEFAULT_MESH_OUTBOUND: &str = "127.0.0.1:15001";
/// Default admin listener of a mesh gateway (the edge's 9901 may run on the same host).
pub const DEFAULT_MESH_ADMIN: &str = "127.0.0.1:15000";
/// Default port of the other gateways' inbound listeners.
pub const DEFAULT_MESH_PORT: u16 = 15008;
/// Default quickstart configuration of `weir demo`.
pub const DEFAULT_DEMO_CONFIG: &str = "conf/quickstart";

#[derive(Parser, Debug)]
#[command(name = "weir", version, about = "Kubernetes edge and mesh proxy built on Pingora")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How weir's own log (stderr) is written: text (colours on a terminal only) or json.
    #[arg(long, global = true, value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the edge tier: Ingress and Gateway API routing from a directory of manifests.
    Edge(EdgeArgs),
    /// Translate a directory of manifests and print every rejected object; exit 1 if any.
    Validate(ValidateArgs),
    /// Run the quickstart on this machine: demo backends plus the edge, until Ctrl-C.
    Demo(DemoArgs),
    /// Run a mesh gateway beside a workload: mutual TLS in front of it, and an outbound
    /// listener for its calls to other Services.
    Mesh(MeshArgs),
    /// Print weir's CustomResourceDefinitions as YAML.
    Crds,
}

/// A mesh gateway's default authorization (`--default-policy`), as Linkerd's
/// `config.linkerd.io/default-inbound-policy`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Every caller that passed the handshake (our trust domain) is allowed.
    #[default]
    AllowAuthenticated,
    /// Every request is refused.
    Deny,
}

#[derive(Args, Debug)]
pub struct MeshArgs {
    /// Where the Services, EndpointSlices, HTTPRoutes and BackendPolicies the outbound side
    /// routes with, and the MeshAuthorizations the inbound side enforces, come from. Without
    /// --config-dir or --source kubernetes only the inbound side runs, allowing every caller of
    /// the trust domain.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The inbound listener's TLS policy (mutual TLS between gateways).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// What the inbound and outbound listeners hold their clients to.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The workload's X.509-SVID certificate chain (PEM, leaf first), watched and reloaded.
    #[arg(long)]
    pub identity_cert: Option<PathBuf>,
    /// The SVID's private key (PEM), watched and reloaded.
    #[arg(long)]
    pub identity_key: Option<PathBuf>,
    /// CA certificates of the trust domain (PEM), watched and reloaded.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// Instead of the three files: a Secret `<namespace>/<name>` of the source (--config-dir, or
    /// the API server), holding the identity as `tls.crt`, `tls.key` and `ca.crt`
    /// (cert-manager's keys); reloaded when it changes.
    #[arg(long)]
    pub identity_secret: Option<String>,
    /// Inbound listener: mutual TLS from other gateways.
    #[arg(long, default_value = DEFAULT_MESH_INBOUND)]
    pub inbound: SocketAddr,
    /// Outbound listener: plain HTTP from the local workload.
    #[arg(long, default_value = DEFAULT_MESH_OUTBOUND)]
    pub outbound: SocketAddr,
    /// Port of the other gateways' inbound listeners.
    #[arg(long, default_value_t = DEFAULT_MESH_PORT)]
    pub mesh_port: u16,
    /// Where the workload listens (127.0.0.1 in a pod).
    #[arg(long, default_value = "127.0.0.1")]
    pub workload_address: IpAddr,
    /// A port of the workload that callers may reach; repeat for several. Callers reach no
    /// other port (none at all without this flag: an outbound-only gateway).
    #[arg(long = "workload-port")]
    pub workload_ports: Vec<u16>,
    /// The workload's namespace, for short Service names (`payments`).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The cluster's DNS domain (`payments.shop.svc.<domain>`).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Admin listener: /metrics, /ready, /live.
    #[arg(long, default_value = DEFAULT_MESH_ADMIN)]
    pub admin: SocketAddr,
    /// What a request to this gateway's workload gets when no MeshAuthorization applies to it,
    /// or when the address and port it dialed are in no EndpointSlice yet (a new Pod):
    /// `allow-authenticated` lets in every caller of the trust domain, `deny` refuses.
    /// Whatever this says, while a Service of the workload has a Deny policy, a request that
    /// cannot be matched to a Service is refused.
    #[arg(long, value_enum, default_value_t = DefaultPolicy::AllowAuthenticated)]
    pub default_policy: DefaultPolicy,
    /// On SIGTERM or Ctrl-C, how long requests in flight (both sides) get to finish (e.g. 30s).
    #[arg(long, default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = crate::api::duration::parse)]
    pub drain_timeout: Duration,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Flags shared by `edge` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// Plaintext listener for Ingress.
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: SocketAddr,
    /// TLS listener for Ingress.
    #[arg(long, default_value = DEFAULT_HTTPS)]
    pub https: SocketAddr,
    /// Address every Gateway listener binds (on the port its manifest gives).
    #[arg(long, default_value = DEFAULT_GATEWAY_ADDRESS)]
    pub gateway_address: IpAddr,
    /// Networks (CIDR, comma-separated or repeated) each Gateway gets an address of its own
    /// from, bound by its listeners and reported in its status: routed IPs on bare metal, or
    /// loopback ones on one machine. Gateways on one port need different addresses. Without it
    /// every Gateway is on --gateway-address.
    #[arg(long = "gateway-addresses", value_delimiter = ',')]
    pub gateway_addresses: Vec<ipnet::IpNet>,
    /// Admin listener: /metrics, /ready, /live, /config_dump.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// IngressClass served (Ingresses naming another class are ignored).
    #[arg(long, default_value = DEFAULT_INGRESS_CLASS)]
    pub ingress_class: String,
    /// `controllerName` of the GatewayClasses served (Gateways of other classes are ignored):
    /// two installations of weir in one cluster each take their own.
    #[arg(long, default_value = crate::translate::gateway::GATEWAY_CONTROLLER)]
    pub controller_name: String,
    /// Also serve Ingresses that name no class.
    #[arg(long)]
    pub watch_ingress_without_class: bool,
    /// Write an access log line per request to stdout.
    #[arg(long, value_enum)]
    pub access_log: Option<AccessLogFormat>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// What a listener holds its clients to (request head size and time, keep-alive, writes, open
/// connections), the same flags for the edge and the mesh.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// The most a request head (request line and headers) may take, HTTP/1 and HTTP/2 alike;
    /// a larger one is answered 431.
    #[arg(long, default_value_t = crate::proxy::listeners::DEFAULT_MAX_REQUEST_HEAD)]
    pub max_request_head: usize,
    /// How long an HTTP/1 request head may take from its first byte; then the connection closes.
    #[arg(long, default_value = crate::proxy::listeners::DEFAULT_REQUEST_HEAD_TIMEOUT, value_parser = crate::api::duration::parse)]
    pub request_head_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive HTTP/1 connection.
    #[arg(long, default_value = crate::proxy::listeners::DEFAULT_KEEPALIVE_TIMEOUT, value_parser = crate::api::duration::parse)]
    pub keepalive_timeout: Duration,
    /// How long one write of a response may wait for a client that does not read.
    #[arg(long, default_value = crate::proxy::listeners::DEFAULT_WRITE_TIMEOUT, value_parser = crate::api::duration::parse)]
    pub write_timeout: Duration,
    /// Open connections per listener; beyond, new ones are closed at once (and counted).
    #[arg(long, default_value_t = crate::proxy::listeners::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> crate::proxy::listeners::ClientLimits {
        crate::proxy::listeners::ClientLimits {
            max_request_head: self.max_request_head,
            request_head_timeout: self.request_head_timeout,
            keepalive_timeout: self.keepalive_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// The TLS policy flags, the same for the edge and the mesh.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// Lowest TLS version the TLS listeners accept (every certificate's too).
    #[arg(long, value_enum, default_value = "1.2")]
    pub tls_min_version: crate::tls::TlsVersion,
    /// TLS 1.2 suites the TLS listeners take, in order of preference (the server's order wins):
    /// OpenSSL names separated by ':'. The default is Mozilla's "intermediate": ECDHE key
    /// exchange with AES-GCM or ChaCha20-Poly1305. TLS 1.3 takes all its suites.
    #[arg(long, default_value = crate::tls::DEFAULT_CIPHERS, value_parser = crate::tls::parse_ciphers)]
    pub tls_ciphers: String,
}

impl TlsArgs {
    pub fn policy(&self) -> crate::tls::TlsPolicy {
        crate::tls::TlsPolicy { min_version: self.tls_min_version, ciphers: self.tls_ciphers.clone() }
    }
}

/// Where configuration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A directory of manifests (`--config-dir`).
    Dir,
    /// The Kubernetes API server (in-cluster, `--kubeconfig` or `KUBECONFIG`).
    Kubernetes,
}

/// The configuration source flags of `weir edge` and `weir mesh`.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Where configuration comes from.
    #[arg(long, value_enum, default_value_t = SourceKind::Dir)]
    pub source: SourceKind,
    /// Directory of Kubernetes manifests (*.yaml, *.yml, multi-document), watched for changes
    /// (`--source dir`).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Kubeconfig file (`--source kubernetes`); else in-cluster, then KUBECONFIG.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A namespace to watch (`--source kubernetes`); repeat for several. Default: all.
    #[arg(long = "watch-namespace")]
    pub watch_namespaces: Vec<String>,
}

impl SourceArgs {
    /// The source the flags name, if any (`--source dir` without `--config-dir`: none); fails,
    /// saying what to fix, on a mismatch.
    pub fn optional_source(&self) -> anyhow::Result<Option<crate::source::ConfigSource>> {
        match (self.source, &self.config_dir) {
            (SourceKind::Dir, None) => {
                anyhow::ensure!(
                    self.kubeconfig.is_none() && self.watch_namespaces.is_empty(),
                    "--kubeconfig and --watch-namespace are for --source kubernetes"
                );
                Ok(None)
            }
            _ => self.source().map(Some),
        }
    }

    /// The source the flags name; fails, saying what to fix, on a mismatch.
    pub fn source(&self) -> anyhow::Result<crate::source::ConfigSource> {
        use crate::source::{kubernetes::KubeSource, ConfigSource};
        match (self.source, &self.config_dir) {
            (SourceKind::Dir, Some(dir)) => {
                anyhow::ensure!(
                    self.kubeconfig.is_none() && self.watch_namespaces.is_empty(),
                    "--kubeconfig and --watch-namespace are for --source kubernetes"
                );
                Ok(ConfigSource::Dir(dir.clone()))
            }
            (SourceKind::Dir, None) => {
                anyhow::bail!("give --config-dir DIR (a directory of manifests), or --source kubernetes")
            }
            (SourceKind::Kubernetes, Some(_)) => {
                anyhow::bail!("--config-dir is for --source dir; with --source kubernetes the API server is the source")
            }
            (SourceKind::Kubernetes, None) => Ok(ConfigSource::Kubernetes(KubeSource {
                kubeconfig: self.kubeconfig.clone(),
                namespaces: self.watch_namespaces.clone(),
                secrets: vec![],
            })),
        }
    }
}

#[derive(Args, Debug)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// On SIGTERM or Ctrl-C, how long open connections get to finish (e.g. 30s).
    #[arg(long, default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = crate::api::duration::parse)]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub status: StatusArgs,
}

/// How replicas elect the one that writes status (`--source kubernetes`).
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// weir's own namespace, where its replicas hold the Lease that elects the one writing
    /// status.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "weir")]
    pub lease_name: String,
    /// How long the Lease stays its holder's without a renewal: a stopped leader is replaced
    /// within it. Whole seconds.
    #[arg(long, default_value = "15s", value_parser = crate::api::duration::parse)]
    pub lease_duration: Duration,
    /// weir's own Service, `<namespace>/<name>` (in a watched namespace): its load balancer's
    /// addresses go into the status of Ingresses of weir's class and of Gateways.
    #[arg(long)]
    pub publish_service: Option<String>,
    /// An IP or host name weir is reached at, for the same statuses; repeat for several.
    #[arg(long = "publish-address")]
    pub publish_addresses: Vec<String>,
}

impl StatusArgs {
    /// How status is written, as the flags say; fails, saying what to fix, on a lease duration
    /// that is not whole seconds or a Service not named `<namespace>/<name>`.
    pub fn options(&self) -> anyhow::Result<crate::status::StatusOptions> {
        use crate::status::leader::LeaderOptions;
        let d = self.lease_duration;
        anyhow::ensure!(
            d.subsec_nanos() == 0 && d.as_secs() >= 1,
            "--lease-duration {d:?}: a Lease counts whole seconds; give at least 1s, such as 15s"
        );
        let publish_service = match &self.publish_service {
            None => None,
            Some(s) => {
                let (ns, name) = s
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                    .ok_or_else(|| anyhow::anyhow!("--publish-service {s:?}: write it as <namespace>/<name>"))?;
                Some((ns.to_string(), name.to_string()))
            }
        };
        Ok(crate::status::StatusOptions {
            leader: LeaderOptions {
                namespace: self.leader_election_namespace.clone(),
                lease_name: self.lease_name.clone(),
                holder: LeaderOptions::default_holder(),
                lease_duration: d,
            },
            publish_service,
            publish_addresses: self.publish_addresses.clone(),
        })
    }
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Directories of manifests to check.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// IngressClass served.
    #[arg(long, default_value = DEFAULT_INGRESS_CLASS)]
    pub ingress_class: String,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The manifests to run.
    #[arg(long, default_value = DEFAULT_DEMO_CONFIG)]
    pub config_dir: PathBuf,
    #[command(flatten)]
    pub listen: ListenArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeouts_are_gateway_api_durations() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let Command::Edge(edge) =
            parse(&["weir", "edge", "--config-dir", "d", "--drain-timeout", "1m30s"]).unwrap().command
        else {
            panic!("not the edge")
        };
        assert_eq!(edge.drain_timeout, Duration::from_secs(90));
        for tier in ["edge", "mesh"] {
            let err = parse(&["weir", tier, "--drain-timeout", "1.5s"]).unwrap_err().to_string();
            assert!(err.contains("\"1.5s\" is not a Gateway API duration"), "{err}");
        }
    }

    #[test]
    fn the_tls_flags_take_a_version_and_suites_boringssl_knows() {
        let listen = |args: &[&str]| {
            let cli = Cli::try_parse_from(["weir", "edge"].iter().chain(args).copied()).map_err(|e| e.to_string())?;
            let Command::Edge(edge) = cli.command else { panic!("not the edge") };
            Ok::<_, String>(edge.listen)
        };
        let defaults = listen(&[]).unwrap();
        assert_eq!(
            (defaults.tls.tls_min_version, defaults.tls.tls_ciphers.as_str()),
            (crate::tls::TlsVersion::Tls12, crate::tls::DEFAULT_CIPHERS)
        );
        let chosen = listen(&["--tls-min-version", "1.3", "--tls-ciphers", "ECDHE-RSA-AES256-GCM-SHA384"]).unwrap();
        assert_eq!(chosen.tls.tls_min_version, crate::tls::TlsVersion::Tls13);
        let err = listen(&["--tls-ciphers", "ECDHE-RSA-AES128-GCM-SHA256:NOT-A-SUITE"]).unwrap_err();
        assert!(err.contains("is not a list of TLS 1.2 suites BoringSSL knows; give OpenSSL names"), "{err}");
        assert!(listen(&["--tls-min-version", "1.1"]).unwrap_err().contains("possible values: 1.2, 1.3"));
        // the mesh's inbound takes the same flags
        let files = ["weir", "mesh", "--identity-cert", "c", "--identity-key", "k", "--trust-bundle", "b"];
        let cli = Cli::try_parse_from(files.iter().chain(&["--tls-min-version", "1.3"]).copied()).unwrap();
        let Command::Mesh(mesh) = cli.command else { panic!("not the mesh") };
        let opts = crate::mesh::MeshOptions::from_args(&mesh).unwrap();
        assert_eq!(opts.tls.min_version, crate::tls::TlsVersion::Tls13);
    }

    #[test]
    fn the_limit_flags_are_the_same_for_the_edge_and_the_mesh() {
        let limits = ["--max-request-head", "8192", "--request-head-timeout", "2s", "--keepalive-timeout", "5s"];
        let more = ["--write-timeout", "1m", "--max-connections", "100"];
        let want = crate::proxy::listeners::ClientLimits {
            max_request_head: 8192,
            request_head_timeout: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(60),
            max_connections: 100,
        };
        let cli = Cli::try_parse_from(["weir", "edge"].iter().chain(&limits).chain(&more).copied()).unwrap();
        let Command::Edge(edge) = cli.command else { panic!("not the edge") };
        assert_eq!(edge.listen.limits.limits(), want);
        let files = ["weir", "mesh", "--identity-cert", "c", "--identity-key", "k", "--trust-bundle", "b"];
        let cli = Cli::try_parse_from(files.iter().chain(&limits).chain(&more).copied()).unwrap();
        let Command::Mesh(mesh) = cli.command else { panic!("not the mesh") };
        assert_eq!(crate::mesh::MeshOptions::from_args(&mesh).unwrap().limits, want);
        let cli = Cli::try_parse_from(files.iter().copied()).unwrap();
        let Command::Mesh(mesh) = cli.command else { panic!("not the mesh") };
        let defaults = crate::mesh::MeshOptions::from_args(&mesh).unwrap().limits;
        assert_eq!(defaults, crate::proxy::listeners::ClientLimits::default());
    }

    #[test]
    fn the_source_flags_say_what_to_fix() {
        let source = |args: &[&str]| {
            let cli = Cli::try_parse_from(["weir", "edge"].iter().chain(args).copied()).map_err(|e| e.to_string())?;
            let Command::Edge(edge) = cli.command else { panic!("not the edge") };
            edge.source.source().map_err(|e| e.to_string())
        };
        assert!(matches!(source(&["--config-dir", "d"]), Ok(crate::source::ConfigSource::Dir(_))));
        let k = source(&["--source", "kubernetes", "--watch-namespace", "a", "--watch-namespace", "b"]);
        let Ok(crate::source::ConfigSource::Kubernetes(k)) = k else { panic!("{k:?}") };
        assert_eq!(k.namespaces, ["a", "b"]);
        assert!(source(&[]).unwrap_err().contains("give --config-dir DIR"));
        assert!(source(&["--source", "kubernetes", "--config-dir", "d"])
            .unwrap_err()
            .contains("--config-dir is for --source dir"));
        assert!(source(&["--config-dir", "d", "--kubeconfig", "k"])
            .unwrap_err()
            .contains("are for --source kubernetes"));
    }

    #[test]
    fn the_mesh_takes_either_source_or_none() {
        let mesh = |args: &[&str]| {
            let cli = Cli::try_parse_from(["weir", "mesh"].iter().chain(args).copied()).map_err(|e| e.to_string())?;
            let Command::Mesh(mesh) = cli.command else { panic!("not the mesh") };
            crate::mesh::MeshOptions::from_args(&mesh).map_err(|e| e.to_string())
        };
        let files = ["--identity-cert", "c", "--identity-key", "k", "--trust-bundle", "b"];
        let inbound_only = mesh(&files).unwrap();
        assert!(inbound_only.source.is_none() && inbound_only.outbound.is_none());
        let k = mesh(&["--source", "kubernetes", "--identity-secret", "shop/id"]).unwrap();
        assert!(matches!(k.source, Some(crate::source::ConfigSource::Kubernetes(_))) && k.outbound.is_some());
        assert!(mesh(&["--identity-secret", "shop/id"])
            .unwrap_err()
            .contains("give --config-dir or --source kubernetes"));
        let files_and_kubeconfig = [&files[..], &["--kubeconfig", "k"]].concat();
        assert!(mesh(&files_and_kubeconfig).unwrap_err().contains("are for --source kubernetes"));
    }
}
